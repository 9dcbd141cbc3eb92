"""report.json, read in one place: the typed report the API serves (the library's own `DistillReport`, the
model `compress distill` writes it from, so the OpenAPI document publishes report.json's schema) and the summary a
job's row keeps."""

from __future__ import annotations

import json
from pathlib import Path

from compressor.report.models import DistillReport as Report

__all__ = ["Report", "read_report", "summary"]


def read_report(out: Path) -> dict | None:
    """OUT/report.json, or None when the job wrote none (yet) or it cannot be read."""
    try:
        return json.loads((out / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def summary(report: dict) -> dict:
    """What the job list shows: sizes, accuracies and their drop, speed-ups, gates; from a report.json."""
    t, s = report.get("teacher") or {}, report.get("student") or {}
    t_acc = t.get("onnx_accuracy", t.get("accuracy"))
    s_acc = s.get("onnx_accuracy", s.get("accuracy"))
    latency = report.get("latency") or {}
    int8 = report.get("int8") or {}
    return {
        "passed": report.get("passed"),
        "teacher_arch": t.get("arch"), "student_arch": s.get("arch"),
        "teacher_params": t.get("params"), "student_params": s.get("params"),
        "size_ratio": (s["params"] / t["params"]) if t.get("params") and s.get("params") else None,
        "teacher_accuracy": t_acc, "student_accuracy": s_acc,
        "accuracy_drop": (t_acc - s_acc) if t_acc is not None and s_acc is not None else None,
        "speedup": latency.get("speedup") or {},
        "gates": [{"name": g.get("name"), "passed": g.get("passed")} for g in report.get("gates") or []],
        "int8_ships": bool(int8.get("ship")) if int8 else None,
        "train_seconds": (report.get("distillation") or {}).get("train_seconds"),
        "resumed_from_epoch": (report.get("distillation") or {}).get("resumed_from_epoch"),
    }
