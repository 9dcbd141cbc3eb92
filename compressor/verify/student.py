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

from compressor.data.datasets import DataBundle, Normalize, stratified_indices
from compressor.export.onnx import check_parity, export_onnx
from compressor.core.progress import console
from compressor.recipe.schema import Recipe
from compressor.export.runtime import CPU, create_session, latency_meta, measure_latencies, onnx_predict, quantize_int8, speedups

PARITY_IMAGES = 68  # real test images compared at batch 1 and 17 (4 full batches of 17), drawn across classes
CALIBRATION_IMAGES = 512
INT8_MARGIN = 0.05  # int8 ships only if it is this much faster than fp32, and faster in every timing round


def agreement_limit(images: int) -> int:
    """How many test images' top-1 may differ between PyTorch and onnxruntime: 0.1 % of them, at least 1.

    With logits equal to within the parity tolerance only near-ties can flip; more is a broken export."""
    return max(1, images // 1000)


def parity_images(split, data: DataBundle, seed: int, n: int = PARITY_IMAGES, mean=None, std=None) -> torch.Tensor:
    """`n` normalised test images drawn across the classes (seeded), (n, C, H, W) float on the CPU."""
    pick = stratified_indices(split.labels, n, seed)
    return Normalize(mean or data.mean, std or data.std, torch.device("cpu"))(split.take(pick).images).contiguous()


def parity_batch_sizes(images: int) -> tuple[int, ...]:
    """1 and 17 (a size other than the export's example batch, and not a divisor of the image count), fewer when
    the test split is smaller than 17 images."""
    return tuple(dict.fromkeys(min(b, images) for b in (1, 17)))


def onnx_split_predictions(session, split, data: DataBundle, batch_size: int = 256, mean=None, std=None) -> np.ndarray:
    """Top-1 class of an ONNX model for every image of a split, normalised a batch at a time (memory stays
    flat); `mean`/`std` override the data's (a model that records its own normalisation is fed with it)."""
    normalize = Normalize(mean or data.mean, std or data.std, torch.device("cpu"))
    out = []
    for images, _ in split.chunks(batch_size):
        x = normalize(images.cpu()).contiguous().numpy()
        out.append(onnx_predict(session, x, batch_size).argmax(1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def accuracy_of(predictions: np.ndarray, split) -> float:
    return 100.0 * int((predictions == split.labels.cpu().numpy()).sum()) / max(len(split), 1)


def onnx_split_accuracy(session, split, data: DataBundle, batch_size: int = 256) -> float:
    """Top-1 (%) of an ONNX model over a whole split."""
    return accuracy_of(onnx_split_predictions(session, split, data, batch_size), split)


def parity_gate(name: str, parity: dict, v) -> dict:
    """max |PyTorch - ONNX| against max_abs_diff + parity_rtol * max|logit|: fp32 rounding grows with the logits'
    scale, so a correct export of a network with logits ~250 differs by more than one with logits ~10."""
    limit = v.max_abs_diff + v.parity_rtol * parity["scale"]
    return gate(name, limit, parity["max_abs_diff"], parity["max_abs_diff"] <= limit)


def onnx_metadata(arch: str, data: DataBundle, kind: str) -> dict[str, str]:
    return {
        "compressor.arch": arch,
        "compressor.kind": kind,
        "compressor.classes": json.dumps(data.classes),
        "compressor.mean": json.dumps(list(data.mean)),
        "compressor.std": json.dumps(list(data.std)),
        "compressor.input_shape": json.dumps(list(data.input_shape)),
        "compressor.dataset": data.name,
        "compressor.preprocess": json.dumps(preprocess(data)),
    }


def preprocess(data: DataBundle) -> dict:
    """How an image becomes the model's input, for whoever deploys it: the evaluation transform and normalisation
    (an ImageFolder: shorter side to resize, centre crop; the built-in datasets are used at their own size)."""
    from compressor.data.streaming import EVAL_CROP

    c, h, w = data.input_shape
    steps = {"resize_shorter_side": round(h / EVAL_CROP), "center_crop": [h, w], "interpolation": "bilinear"} \
        if data.name == "imagefolder" else {"size": [h, w]}
    return {**steps, "channels": c, "scale": 1 / 255, "mean": list(data.mean), "std": list(data.std)}


def gate(name: str, limit, value, passed: bool) -> dict:
    return {"name": name, "limit": limit, "value": value, "passed": bool(passed)}


def _latency_gates(v, latency: dict) -> list[dict]:
    gates = []
    if v.min_speedup is not None and "teacher" in latency:
        if latency.get("speedup"):
            worst = min(latency["speedup"].values())
            gates.append(gate("min_speedup", v.min_speedup, worst, worst >= v.min_speedup))
        else:  # no batch size both models run at
            gates.append(gate("min_speedup", v.min_speedup, None, False))
    for b, limit in (v.max_latency_ms or {}).items():
        p50 = latency["student"].get(str(b), {}).get("p50_ms")
        if p50 is None:
            gates.append(gate(f"max_latency_ms[{b}]", limit, None, False))  # not measured: batch not in batch_sizes
        else:
            gates.append(gate(f"max_latency_ms[{b}]", limit, p50, p50 <= limit))
    return gates


def verify_student(
    student: nn.Module, teacher: nn.Module, data: DataBundle, recipe: Recipe, out: Path, report: dict, device,
    torch_predictions: torch.Tensor | None = None,
) -> dict:
    """Export teacher and student, prove parity and accuracy in onnxruntime, time both, apply the gates.

    `torch_predictions`: PyTorch's top-1 per test image (the student's), which onnxruntime's must match but for
    `agreement_limit` near-ties. Returns the report sections `export`, `latency`, `gates` (and `int8` when
    asked), and fills in the teacher's and student's `onnx_accuracy`.
    """
    v = recipe.verify
    opset = recipe.export.opset
    student_path, teacher_path = out / "student.onnx", out / "teacher.onnx"
    console.print(f"exporting to ONNX (opset {opset}) and verifying with onnxruntime ...")
    exported = export_onnx(student, student_path, input_shape=data.input_shape, opset=opset,
                           metadata=onnx_metadata(report["student"]["arch"], data, "student"))
    export_onnx(teacher, teacher_path, input_shape=data.input_shape, opset=opset,
                metadata=onnx_metadata(report["teacher"]["arch"], data, "teacher"))

    images = parity_images(data.test, data, recipe.seed)
    s_sess = create_session(student_path, threads=v.threads, device=recipe.device)
    t_sess = create_session(teacher_path, threads=v.threads, device=recipe.device)
    sizes = parity_batch_sizes(len(images))
    # both sides fp32 on the CPU: the recipe's sessions where they are CPU ones, else check_parity opens its own
    s_cpu, t_cpu = (s if s.provider == CPU else None for s in (s_sess, t_sess))
    parity = check_parity(student, student_path, images, batch_sizes=sizes, session=s_cpu)
    t_parity = check_parity(teacher, teacher_path, images, batch_sizes=sizes, session=t_cpu)

    s_pred = onnx_split_predictions(s_sess, data.test, data)
    report["student"]["onnx_accuracy"] = accuracy_of(s_pred, data.test)
    report["teacher"]["onnx_accuracy"] = onnx_split_accuracy(t_sess, data.test, data)

    console.print(f"timing teacher and student at batch sizes {v.batch_sizes} in {v.rounds} alternating rounds "
                  f"({s_sess.provider}, {s_sess.threads} threads) ...")
    timed = measure_latencies({"teacher": t_sess, "student": s_sess}, v.batch_sizes, data.input_shape,
                              warmup=v.warmup, min_runs=v.min_runs, min_seconds=v.min_seconds, seed=recipe.seed,
                              rounds=v.rounds)
    ratio, interval = speedups(timed["teacher"], timed["student"])
    latency = {**latency_meta(s_sess), "rounds": v.rounds, **timed, "speedup": ratio, "speedup_interval": interval}
    sections = {
        "export": {**exported, "max_abs_diff": parity["max_abs_diff"], "parity": parity,
                   "teacher_max_abs_diff": t_parity["max_abs_diff"], "teacher_parity": t_parity,
                   "teacher_path": str(teacher_path)},
        "latency": latency,
    }

    s_acc, t_acc = report["student"]["onnx_accuracy"], report["teacher"]["onnx_accuracy"]
    gates = [parity_gate("max_abs_diff", parity, v), parity_gate("teacher_max_abs_diff", t_parity, v)]
    if torch_predictions is not None:
        differ = int((torch_predictions.cpu().numpy() != s_pred).sum())
        limit = agreement_limit(len(data.test))
        gates.append(gate("onnx_accuracy_agreement", limit, differ, differ <= limit))  # in images
    if v.max_accuracy_drop is not None:
        drop = t_acc - s_acc
        gates.append(gate("max_accuracy_drop", v.max_accuracy_drop, drop, drop <= v.max_accuracy_drop))
    gates += _latency_gates(v, latency)

    if recipe.export.quantize == "int8":
        sessions = {"teacher": t_sess, "student": s_sess}
        sections["int8"] = _int8(student_path, out / "student.int8.onnx", data, recipe, t_acc, sessions)
    sections["shipped"] = sections.get("int8", {}).get("path") if sections.get("int8", {}).get("ship") else str(student_path)
    sections["gates"] = gates
    return sections


def _int8(fp32_path: Path, int8_path: Path, data: DataBundle, recipe: Recipe, t_acc: float, sessions: dict) -> dict:
    """Quantise, measure beside fp32, and say which variant ships: int8 only if it passes the gates and wins.

    int8 runs on onnxruntime's CPU provider, so it is timed against fp32 teacher and student on the CPU provider
    too (the recipe's sessions when they are CPU ones, else CPU sessions of the same files), in alternating
    rounds; it ships only when it is INT8_MARGIN faster than fp32 at every batch size and in every round.
    student.onnx stays the fp32 model (its parity with PyTorch is what `max_abs_diff` proves); the int8 file
    sits beside it and the report's `shipped` names the one to deploy.
    """
    v = recipe.verify
    pick = stratified_indices(data.train.labels, CALIBRATION_IMAGES, recipe.seed)
    calib = Normalize(data.mean, data.std, torch.device("cpu"))(data.train.take(pick).images).contiguous()
    console.print(f"quantising to int8 (static {recipe.export.int8_format}, {len(pick)} calibration images) ...")
    info = quantize_int8(fp32_path, int8_path, calib, quant_format=recipe.export.int8_format)
    cpu = {role: s if s.provider == CPU else create_session(s.path, threads=v.threads, device="cpu")
           for role, s in sessions.items()}
    cpu["int8"] = create_session(int8_path, threads=v.threads, device="cpu")
    acc = onnx_split_accuracy(cpu["int8"], data.test, data)
    timed = measure_latencies(cpu, v.batch_sizes, data.input_shape, warmup=v.warmup, min_runs=v.min_runs,
                              min_seconds=v.min_seconds, seed=recipe.seed, rounds=v.rounds)
    vs_teacher, _ = speedups(timed["teacher"], timed["int8"])
    vs_fp32, vs_fp32_interval = speedups(timed["student"], timed["int8"])
    latency = {"teacher": timed["teacher"], "student": timed["int8"], "speedup": vs_teacher}
    gates = []
    if v.max_accuracy_drop is not None:
        gates.append(gate("max_accuracy_drop", v.max_accuracy_drop, t_acc - acc, t_acc - acc <= v.max_accuracy_drop))
    gates += _latency_gates(v, latency)
    faster = {b: vs_fp32[b] >= 1 + INT8_MARGIN and vs_fp32_interval[b][0] > 1 for b in vs_fp32}
    ship = all(g_["passed"] for g_ in gates) and all(faster.values())
    if ship:
        why = (f"int8 passes every gate and is at least {INT8_MARGIN:.0%} faster than fp32 (same provider, every "
               "timing round) at every batch size")
    elif not all(faster.values()):
        slower = [b for b, f in faster.items() if not f]
        why = (f"fp32 ships: int8 is not faster than fp32 beyond the noise ({INT8_MARGIN:.0%} and in every round, on "
               f"the CPU provider) at batch size(s) {', '.join(slower)}")
    else:
        why = "fp32 ships: int8 fails " + ", ".join(g_["name"] for g_ in gates if not g_["passed"])
    return {**info, "accuracy": acc, "provider": CPU, "latency": timed["int8"], "fp32_latency": timed["student"],
            "speedup": vs_teacher, "speedup_vs_fp32": vs_fp32, "speedup_vs_fp32_interval": vs_fp32_interval,
            "gates": gates, "ship": ship, "decision": why}
