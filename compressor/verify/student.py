"""Proof that the exported student is what was promised: parity, accuracy in onnxruntime, latency, gates.

The last stage of `compress distill` (teacher vs student); `compress verify MODEL.onnx` uses the same parts
(jobs.verify). `verify_student` returns its sections as one typed `Verification`; it never changes the caller's
report.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from compressor.core import cache
from compressor.core.fileio import write_bytes
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


# The teacher's export and its ONNX accuracy, kept for the next run: an ablation's runs, a service worker's jobs,
# a sweep over student sizes and the test suite verify one teacher again and again. In this process (one entry:
# key, ONNX bytes, accuracy) and on disk for the next process (core.cache: keyed the same, checked when read).
_teacher_done: list[tuple[str, bytes, float]] = []
CACHE_KIND = "teacher-onnx"
CACHE_FORMAT = 1  # raised when what is exported or how accuracy is measured changes within a release


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("compressor")
    except PackageNotFoundError:
        return "unknown"


# data keys that shape only the training images (how many, the validation share, augmentation, decoding workers):
# neither the teacher's ONNX file nor its accuracy on the test split depends on them, so runs that differ only in
# them (an ablation over training budgets, a service's jobs on different training subsets) share one export
TRAIN_ONLY = {"limit_train", "val_fraction", "pad", "flip", "augment", "workers"}


def _teacher_key(teacher: nn.Module, teacher_arch: str, recipe: Recipe, data: DataBundle) -> str:
    """What the teacher's ONNX file and accuracy depend on: its weights, the data, how it is exported and run, and
    the versions of what exports and runs it."""
    import onnx
    import onnxruntime

    h = hashlib.sha256()
    for name, t in teacher.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    test_subset_seed = recipe.seed if recipe.data.limit_test else None  # limit_test draws its subset by the seed
    versions = (CACHE_FORMAT, _installed_version(), torch.__version__, onnx.__version__, onnxruntime.__version__)
    test_data = recipe.data.model_dump_json(exclude=TRAIN_ONLY)
    for part in (teacher_arch, test_data, str(test_subset_seed), str(recipe.export.opset),
                 str(recipe.device), str(data.preprocess), str(len(data.test)), str(versions)):
        h.update(part.encode())
    return h.hexdigest()


def _export_teacher(teacher: nn.Module, teacher_arch: str, data: DataBundle, recipe: Recipe, path: Path,
                    accuracy) -> float:
    """teacher.onnx written (exported, or the same bytes as an earlier run's for the same key) and its ONNX
    accuracy, computed by `accuracy(path)` only when no earlier run measured it for the same weights, data and
    export (from disk: a built-in dataset's fixed files; an ImageFolder's accuracy is measured in each process, its
    images may change between runs). A reused file is still held to the teacher's parity gate by the caller."""
    key = _teacher_key(teacher, teacher_arch, recipe, data)
    if _teacher_done and _teacher_done[0][0] == key:
        write_bytes(path, _teacher_done[0][1])
        return _teacher_done[0][2]
    hit = cache.get(CACHE_KIND, key)
    if hit is not None and isinstance(hit[1].get("accuracy"), float):
        onnx_bytes, acc = hit[0], hit[1]["accuracy"]
        write_bytes(path, onnx_bytes)
        if recipe.data.name == "imagefolder":  # its images may have changed on disk since: measured again
            acc = accuracy(path)
    else:
        export_onnx(teacher, path, input_shape=data.input_shape, opset=recipe.export.opset,
                    metadata=onnx_metadata(teacher_arch, data, "teacher"))
        acc = accuracy(path)
        onnx_bytes = path.read_bytes()
        cache.put(CACHE_KIND, key, onnx_bytes, {"accuracy": acc, "arch": teacher_arch})
    _teacher_done[:] = [(key, onnx_bytes, acc)]
    return acc


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
    batch = min(256, eval_batch)  # what fits in memory beside the models (fewer images a batch for large ones)
    t_sess = None

    def teacher_accuracy(path: Path) -> float:
        nonlocal t_sess
        t_sess = create_session(path, threads=v.threads, device=recipe.device)
        return onnx_split_accuracy(t_sess, data.test, data, batch)

    t_acc = _export_teacher(teacher, teacher_arch, data, recipe, teacher_path, teacher_accuracy)

    reporter.phase("verifying", "parity, accuracy and latency in onnxruntime")
    images = parity_images(data.test, data, recipe.seed)
    s_sess = create_session(student_path, threads=v.threads, device=recipe.device)
    t_sess = t_sess or create_session(teacher_path, threads=v.threads, device=recipe.device)
    sizes = parity_batch_sizes(len(images))
    # both sides fp32 on the CPU: the recipe's sessions where they are CPU ones, else check_parity opens its own
    s_cpu, t_cpu = (s if s.provider == CPU else None for s in (s_sess, t_sess))
    parity = Parity(**check_parity(student, student_path, images, batch_sizes=sizes, session=s_cpu))
    t_parity = Parity(**check_parity(teacher, teacher_path, images, batch_sizes=sizes, session=t_cpu))

    s_pred = onnx_split_predictions(s_sess, data.test, data, batch)
    s_acc = accuracy_of(s_pred, data.test)

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
