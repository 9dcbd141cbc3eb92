"""Proof that the exported student is what was promised: parity, accuracy in onnxruntime, latency, gates.

Used by the last stage of `compress distill` (teacher vs student) and by `compress verify MODEL.onnx`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .datasets import DataBundle, Normalize
from .export import check_parity, export_onnx
from .progress import console
from .recipe import Recipe
from .runtime import create_session, latency_meta, measure_latency, onnx_predict, quantize_int8

# ONNX and PyTorch top-1 on the same test split must agree within this many points. With logits equal to
# 1e-4, only near-ties can flip; 0.1 point is 10 images of 10,000 — more than that is a broken export.
ACCURACY_AGREEMENT = 0.1
PARITY_IMAGES = 68  # real test images compared at batch 1 and 17 (4 full batches of 17)
CALIBRATION_IMAGES = 512


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape) -> int:
    """FLOPs of one image's forward pass, counted by torch.utils.flop_counter (a multiply-add is 2)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def _normalised(split, data: DataBundle, limit: int | None = None) -> torch.Tensor:
    images = split.images[:limit] if limit else split.images
    return Normalize(data.mean, data.std, torch.device("cpu"))(images.cpu()).contiguous()  # (N, C, H, W) float


def onnx_split_accuracy(session, split, data: DataBundle, batch_size: int = 256) -> float:
    """Top-1 (%) of an ONNX model over a whole split, normalised a batch at a time (memory stays flat)."""
    normalize = Normalize(data.mean, data.std, torch.device("cpu"))
    correct = 0
    for i in range(0, len(split), batch_size):
        x = normalize(split.images[i : i + batch_size].cpu()).contiguous().numpy()
        correct += int((onnx_predict(session, x, batch_size).argmax(1) == split.labels[i : i + batch_size].cpu().numpy()).sum())
    return 100.0 * correct / max(len(split), 1)


def onnx_metadata(arch: str, data: DataBundle, kind: str) -> dict[str, str]:
    return {
        "compressor.arch": arch,
        "compressor.kind": kind,
        "compressor.classes": json.dumps(data.classes),
        "compressor.mean": json.dumps(list(data.mean)),
        "compressor.std": json.dumps(list(data.std)),
        "compressor.input_shape": json.dumps(list(data.input_shape)),
        "compressor.dataset": data.name,
    }


def gate(name: str, limit, value, passed: bool) -> dict:
    return {"name": name, "limit": limit, "value": value, "passed": bool(passed)}


def _latency_gates(v, latency: dict) -> list[dict]:
    gates = []
    if v.min_speedup is not None and latency.get("speedup"):
        worst = min(latency["speedup"].values())
        gates.append(gate("min_speedup", v.min_speedup, worst, worst >= v.min_speedup))
    for b, limit in (v.max_latency_ms or {}).items():
        p50 = latency["student"].get(str(b), {}).get("p50_ms")
        if p50 is None:
            gates.append(gate(f"max_latency_ms[{b}]", limit, None, False))  # not measured: batch not in batch_sizes
        else:
            gates.append(gate(f"max_latency_ms[{b}]", limit, p50, p50 <= limit))
    return gates


def verify_student(
    student: nn.Module, teacher: nn.Module, data: DataBundle, recipe: Recipe, out: Path, report: dict, device
) -> dict:
    """Export teacher and student, prove parity and accuracy in onnxruntime, time both, apply the gates.

    Returns the report sections `export`, `latency`, `gates` (and `int8` when asked), and fills in the
    teacher's and student's `onnx_accuracy`.
    """
    v = recipe.verify
    opset = recipe.export.opset
    student_path, teacher_path = out / "student.onnx", out / "teacher.onnx"
    console.print(f"exporting to ONNX (opset {opset}) and verifying with onnxruntime ...")
    exported = export_onnx(student, student_path, input_shape=data.input_shape, opset=opset,
                           metadata=onnx_metadata(report["student"]["arch"], data, "student"))
    export_onnx(teacher, teacher_path, input_shape=data.input_shape, opset=opset,
                metadata=onnx_metadata(report["teacher"]["arch"], data, "teacher"))

    parity_images = _normalised(data.test, data, PARITY_IMAGES)
    s_sess = create_session(student_path, threads=v.threads, device=recipe.device)
    t_sess = create_session(teacher_path, threads=v.threads, device=recipe.device)
    cpu_sess = s_sess if s_sess.provider == "CPUExecutionProvider" else create_session(student_path, device="cpu")
    parity = check_parity(student, student_path, parity_images, batch_sizes=(1, 17), session=cpu_sess)
    t_parity = check_parity(teacher, teacher_path, parity_images, batch_sizes=(1, 17))

    report["student"]["onnx_accuracy"] = onnx_split_accuracy(s_sess, data.test, data)
    report["teacher"]["onnx_accuracy"] = onnx_split_accuracy(t_sess, data.test, data)

    console.print(f"timing teacher and student at batch sizes {v.batch_sizes} ({s_sess.provider}, {s_sess.threads} threads) ...")
    lat_t = measure_latency(t_sess, v.batch_sizes, data.input_shape, warmup=v.warmup, min_runs=v.min_runs,
                            min_seconds=v.min_seconds, seed=recipe.seed)
    lat_s = measure_latency(s_sess, v.batch_sizes, data.input_shape, warmup=v.warmup, min_runs=v.min_runs,
                            min_seconds=v.min_seconds, seed=recipe.seed)
    latency = {
        **latency_meta(s_sess),
        "teacher": lat_t,
        "student": lat_s,
        "speedup": {b: lat_t[b]["p50_ms"] / lat_s[b]["p50_ms"] for b in lat_s},
    }
    sections = {
        "export": {**exported, "max_abs_diff": parity["max_abs_diff"], "parity": parity,
                   "teacher_max_abs_diff": t_parity["max_abs_diff"], "teacher_path": str(teacher_path)},
        "latency": latency,
    }

    s_acc, t_acc = report["student"]["onnx_accuracy"], report["teacher"]["onnx_accuracy"]
    gates = [gate("max_abs_diff", v.max_abs_diff, parity["max_abs_diff"], parity["max_abs_diff"] <= v.max_abs_diff)]
    mismatch = abs(s_acc - report["student"]["accuracy"])
    gates.append(gate("onnx_accuracy_agreement", ACCURACY_AGREEMENT, mismatch, mismatch <= ACCURACY_AGREEMENT))
    if v.max_accuracy_drop is not None:
        drop = t_acc - s_acc
        gates.append(gate("max_accuracy_drop", v.max_accuracy_drop, drop, drop <= v.max_accuracy_drop))
    gates += _latency_gates(v, latency)

    if recipe.export.quantize == "int8":
        sections["int8"] = _int8(student_path, out / "student.int8.onnx", data, recipe, t_acc, lat_t, lat_s)
    sections["shipped"] = sections.get("int8", {}).get("path") if sections.get("int8", {}).get("ship") else str(student_path)
    sections["gates"] = gates
    return sections


def _int8(fp32_path: Path, int8_path: Path, data: DataBundle, recipe: Recipe, t_acc: float, lat_t: dict,
          lat_fp32: dict) -> dict:
    """Quantise, measure beside fp32, and say which variant ships: int8 only if it passes the gates and wins.

    student.onnx stays the fp32 model (its parity with PyTorch is what `max_abs_diff` proves); the int8 file
    sits beside it and the report's `shipped` names the one to deploy.
    """
    v = recipe.verify
    g = torch.Generator().manual_seed(recipe.seed)
    pick = torch.randperm(len(data.train), generator=g)[:CALIBRATION_IMAGES]
    calib = Normalize(data.mean, data.std, torch.device("cpu"))(data.train.images[pick].cpu()).contiguous()
    console.print(f"quantising to int8 (static QDQ, {len(pick)} calibration images) ...")
    info = quantize_int8(fp32_path, int8_path, calib)
    sess = create_session(int8_path, threads=v.threads, device="cpu")
    acc = onnx_split_accuracy(sess, data.test, data)
    lat = measure_latency(sess, v.batch_sizes, data.input_shape, warmup=v.warmup, min_runs=v.min_runs,
                          min_seconds=v.min_seconds, seed=recipe.seed)
    latency = {"student": lat, "speedup": {b: lat_t[b]["p50_ms"] / lat[b]["p50_ms"] for b in lat}}
    gates = []
    if v.max_accuracy_drop is not None:
        gates.append(gate("max_accuracy_drop", v.max_accuracy_drop, t_acc - acc, t_acc - acc <= v.max_accuracy_drop))
    gates += _latency_gates(v, latency)
    faster = {b: lat[b]["p50_ms"] < lat_fp32[b]["p50_ms"] for b in lat}
    ship = all(g_["passed"] for g_ in gates) and all(faster.values())
    if ship:
        why = "int8 passes every gate and is faster than fp32 at every batch size"
    elif not all(faster.values()):
        slower = [b for b, f in faster.items() if not f]
        why = f"fp32 ships: int8 is not faster at batch size(s) {', '.join(slower)}"
    else:
        why = "fp32 ships: int8 fails " + ", ".join(g_["name"] for g_ in gates if not g_["passed"])
    return {**info, "accuracy": acc, "latency": lat, "speedup_vs_fp32": {b: lat_fp32[b]["p50_ms"] / lat[b]["p50_ms"] for b in lat},
            "gates": gates, "ship": ship, "decision": why}
