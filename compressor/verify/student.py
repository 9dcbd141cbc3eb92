"""Proof that the exported student is what was promised: parity, accuracy in onnxruntime, latency, gates.

The last stage of `compress distill` (teacher vs student); `compress verify MODEL.onnx` uses the same parts
(jobs.verify). `verify_student` returns its sections as one typed `Verification`; it never changes the caller's
report.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from compressor.core.progress import Reporter, console
from compressor.data.splits import DataBundle
from compressor.export.metadata import onnx_metadata
from compressor.export.onnx import check_parity, export_onnx
from compressor.export.sessions import CPU, create_session
from compressor.recipe.schema import Recipe
from compressor.verify import gates
from compressor.verify.accuracy import accuracy_of, onnx_split_accuracy, onnx_split_predictions
from compressor.verify.int8 import check_int8
from compressor.verify.latency import latency_meta, measure_latencies, speedups
from compressor.verify.parity import parity_batch_sizes, parity_images
from compressor.verify.results import ExportSection, Latency, Parity, Verification


def verify_student(
    student: nn.Module, teacher: nn.Module, data: DataBundle, recipe: Recipe, out: Path, *, student_arch: str,
    teacher_arch: str, torch_predictions: torch.Tensor | None = None, reporter: Reporter | None = None,
    eval_batch: int = 256,
) -> Verification:
    """Export teacher and student, prove parity and accuracy in onnxruntime, time both, apply the gates.

    `torch_predictions`: PyTorch's top-1 per test image (the student's), which onnxruntime's must match but for
    a few near-ties (gates.agreement). `eval_batch`: images a batch that fit in memory beside the models.
    """
    v = recipe.verify
    opset = recipe.export.opset
    student_path, teacher_path = out / "student.onnx", out / "teacher.onnx"
    reporter = reporter or Reporter("verify")
    reporter.phase("exporting", f"exporting teacher and student to ONNX (opset {opset})")
    console.print(f"exporting to ONNX (opset {opset}) and verifying with onnxruntime ...")
    exported = export_onnx(student, student_path, input_shape=data.input_shape, opset=opset,
                           metadata=onnx_metadata(student_arch, data, "student"))
    export_onnx(teacher, teacher_path, input_shape=data.input_shape, opset=opset,
                metadata=onnx_metadata(teacher_arch, data, "teacher"))

    reporter.phase("verifying", "parity, accuracy and latency in onnxruntime")
    images = parity_images(data.test, data, recipe.seed)
    s_sess = create_session(student_path, threads=v.threads, device=recipe.device)
    t_sess = create_session(teacher_path, threads=v.threads, device=recipe.device)
    sizes = parity_batch_sizes(len(images))
    # both sides fp32 on the CPU: the recipe's sessions where they are CPU ones, else check_parity opens its own
    s_cpu, t_cpu = (s if s.provider == CPU else None for s in (s_sess, t_sess))
    parity = Parity(**check_parity(student, student_path, images, batch_sizes=sizes, session=s_cpu))
    t_parity = Parity(**check_parity(teacher, teacher_path, images, batch_sizes=sizes, session=t_cpu))

    batch = min(256, eval_batch)  # what fits in memory beside the models (fewer images a batch for large ones)
    s_pred = onnx_split_predictions(s_sess, data.test, data, batch)
    s_acc, t_acc = accuracy_of(s_pred, data.test), onnx_split_accuracy(t_sess, data.test, data, batch)

    console.print(f"timing teacher and student at batch sizes {v.batch_sizes} in {v.rounds} alternating rounds "
                  f"({s_sess.provider}, {s_sess.threads} threads) ...")
    timed = measure_latencies({"teacher": t_sess, "student": s_sess}, v.batch_sizes, data.input_shape,
                              warmup=v.warmup, min_runs=v.min_runs, min_seconds=v.min_seconds, seed=recipe.seed,
                              rounds=v.rounds)
    ratio, interval = speedups(timed["teacher"], timed["student"])
    latency = Latency(**latency_meta(s_sess), rounds=v.rounds, teacher=timed["teacher"], student=timed["student"],
                      speedup=ratio, speedup_interval=interval)

    found = [gates.parity("max_abs_diff", parity.max_abs_diff, parity.scale, v.max_abs_diff, v.parity_rtol),
             gates.parity("teacher_max_abs_diff", t_parity.max_abs_diff, t_parity.scale, v.max_abs_diff,
                          v.parity_rtol)]
    if torch_predictions is not None:
        differ = int((torch_predictions.cpu().numpy() != s_pred).sum())
        found.append(gates.agreement(differ, len(data.test)))
    found += gates.accuracy_drop(t_acc, s_acc, v.max_accuracy_drop)
    found += gates.latency_gates(v, ratio, {b: s.p50_ms for b, s in latency.student.items()})

    int8 = None
    if recipe.export.quantize == "int8":
        sessions = {"teacher": t_sess, "student": s_sess}
        int8 = check_int8(student_path, out / "student.int8.onnx", data, recipe, t_acc, sessions, batch)
    export = ExportSection(**exported, max_abs_diff=parity.max_abs_diff, parity=parity,
                           teacher_max_abs_diff=t_parity.max_abs_diff, teacher_parity=t_parity,
                           teacher_path=str(teacher_path))
    return Verification(export=export, latency=latency, int8=int8, gates=found,
                        shipped=int8.path if int8 is not None and int8.ship else str(student_path),
                        onnx_accuracy={"teacher": t_acc, "student": s_acc})
