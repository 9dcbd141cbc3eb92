"""`compress distill`, the main job: a student grown (or built) for the teacher, distilled, tested, exported,
verified in onnxruntime and reported; exit 1 (GateFailure) after every file is written when a gate fails.

    load data and teacher -> build the student -> pair attention points -> fit -> test in PyTorch
    -> save student.pt -> export + verify (verify.student) -> figures, report.json, report.md
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from compressor.core import distributed
from compressor.core.errors import UserError
from compressor.core.device import environment, memory_format, resolve_device, seed_everything
from compressor.core.fileio import write_json, write_text
from compressor.core.progress import Listener, Reporter, TerminalProgress, console
from compressor.data.datasets import data_root, load_data
from compressor.data.splits import DataBundle
from compressor.distill.objective import check_data_parallel
from compressor.distill.pairs import Pair, find_pairs
from compressor.distill.points import modified_in_place
from compressor.export.sessions import require_provider
from compressor.jobs.common import batches_for, raise_failed, recompute_batchnorm, run_inputs
from compressor.jobs.outdir import claim, claimed, remove_leftovers
from compressor.jobs.paths import RunPaths
from compressor.models import checkpoint as ckpt_io
from compressor.models.batchnorm import STALE_LIMIT, stale_fraction
from compressor.models.evaluate import evaluate
from compressor.models.measure import count_flops, count_params
from compressor.recipe.schema import Recipe, teacher_arch_given
from compressor.report.figures import write_figures
from compressor.report.models import BatchNormRefresh, DataSection, Distillation, DistillReport, ModelEntry
from compressor.report.markdown import print_summary, render_markdown
from compressor.students.build import Student, build_student, saved_entry
from compressor.teachers.load import LoadedModel, load_teacher
from compressor.train.loop import FitResult, FitSpec, fit
from compressor.train.setup import check_memory
from compressor.verify.candidates import CandidateTimer
from compressor.verify.results import Verification
from compressor.verify.student import verify_student


def _saved_student(paths: RunPaths, resume: bool) -> dict | None:
    """--resume of a run whose student was grown from the teacher: the saved channel plan rebuilds it."""
    if not (resume and paths.state.exists()):
        return None
    state = ckpt_io.load_trusted_dict(paths.state)
    entry = state.get("student") if isinstance(state, dict) else None
    return entry if isinstance(entry, dict) else None


def distill(
    teacher_path: Path,
    recipe: Recipe,
    out: Path,
    *,
    device: str | None = None,
    resume: bool = False,
    force: bool = False,
    trust_teacher: bool = False,
    progress: Listener | None = None,
    cancel: Callable[[], bool] | None = None,
) -> DistillReport:
    """`compress distill`: the main job. Returns the report; raises GateFailure after writing it if a gate fails.

    `progress` gets the job's ProgressEvents (phase; epoch, step, img/s, ETA while it trains) beside the terminal's
    bar; `cancel()` is polled between training steps and phases, and True stops the job as SIGTERM does (the state
    saved for --resume, `Cancelled`, exit 130)."""
    started = time.perf_counter()
    paths = RunPaths(out)
    dev = distributed.setup(resolve_device(device or recipe.device), recipe.train)  # joins torchrun's processes
    check_data_parallel(recipe.distill, distributed.world_size())
    if recipe.student.latency_target() and distributed.world_size() > 1:  # each process would search on its own
        raise UserError("student.latency: the latency search runs in one process; distil with --nproc 1, or size "
                        "the student by student.size / flops")
    require_provider(device or recipe.device)  # before any work: verification opens sessions on this device
    parallel = distributed.describe(recipe.train)
    listeners = [TerminalProgress(), *([progress] if progress else [])] if distributed.is_main() else []
    reporter = Reporter("distill", listeners, cancel)
    held = distributed.on_main(claim, paths, resume=resume, force=force, inputs=run_inputs(teacher_path, recipe),
                               data_root=data_root(recipe.data))
    return claimed(held, lambda: _distill(teacher_path, recipe, out, dev, parallel, started, resume, trust_teacher,
                                          reporter), paths.state)


def _distill(teacher_path: Path, recipe: Recipe, out: Path, dev, parallel, started: float, resume: bool,
             trust_teacher: bool, reporter: Reporter) -> DistillReport | None:
    paths = RunPaths(out)
    reporter.phase("loading", f"loading the data and the teacher {teacher_path}")
    distributed.on_main(remove_leftovers, paths)
    seed_everything(recipe.seed)
    data, teacher = _inputs(teacher_path, recipe, trust_teacher)
    # a batch the teacher's forward alone cannot take is refused before the student is grown (train.setup checks
    # the whole step once the student exists)
    check_memory(None, teacher.model, data.input_shape, recipe.train.batch_size // distributed.world_size(), dev)
    reporter.phase("growing", "building the student")
    with tempfile.TemporaryDirectory(prefix="compressor-search-") as scratch:  # the candidates' ONNX files
        timer = lambda: CandidateTimer(teacher.model, data, recipe, Path(scratch))  # noqa: E731
        grown = build_student(recipe, teacher, data, saved=_saved_student(paths, resume), timer=timer)
    pairs = _pairs(recipe, teacher, grown, data, dev)
    initial_student = {k: v.detach().clone() for k, v in grown.model.state_dict().items()}  # the "before" figure
    result = fit(grown.model, data, FitSpec.of(recipe, "distill", teacher.model), paths, device=dev,
                 teacher=teacher.model, pairs=pairs, resume=resume, reporter=reporter,
                 checkpoint_extra=lambda: {"student": saved_entry(grown)})
    if not distributed.finish():  # the other ranks are done; rank 0 tests, exports, verifies and reports
        return None
    refreshed = _refresh_batchnorm(result, recipe, data, dev)
    reporter.phase("testing", "test accuracy of teacher and student in PyTorch")
    tested = _test_and_save(result, grown, teacher, teacher_path, data, recipe, out, dev)
    verified = verify_student(result.model, teacher.model, data, recipe, out, student_arch=grown.arch,
                              teacher_arch=teacher.arch, torch_predictions=tested["student"]["predictions"],
                              reporter=reporter, eval_batch=result.eval_batch)
    report = _report(recipe, teacher, teacher_path, grown, data, pairs, result, tested, verified, parallel, dev,
                     started, refreshed)
    reporter.phase("reporting", "figures, report.json, report.md")
    figures = write_figures(out, report, teacher.model, result.model, initial_student, data, recipe, pairs)
    report = report.model_copy(update={"figures": figures, "wall_seconds": time.perf_counter() - started})
    write_text(out / "report.md", render_markdown(report))
    write_json(out / "report.json", report.model_dump(mode="json"))
    print_summary(report)
    reporter.emit("done", message="passed" if report.passed else "a gate failed")
    console.print(f"outputs in {out}/: {', '.join(written_files(paths))}; deploy {report.shipped}")
    raise_failed(report.gates)
    return report


def _refresh_batchnorm(result: FitResult, recipe: Recipe, data: DataBundle, dev) -> BatchNormRefresh | None:
    """Recompute the student's BatchNorm statistics on the calibration sample when training was too short for its
    BatchNorm momentum to replace the ones it started with (models.batchnorm: a grown MobileNetV3's eval-mode
    logits reached 5e9 on statistics 93 % stale). Longer runs are left exactly as trained."""
    stale = stale_fraction(result.model, result.steps)
    if stale <= STALE_LIMIT:
        return None
    n = recompute_batchnorm(result.model, recipe, data, dev, f"after {result.steps} training steps {stale:.0%} of "
                            "them were still the ones the student started with")
    return BatchNormRefresh(stale_fraction=stale, steps=result.steps, images=n)


def written_files(paths: RunPaths) -> list[str]:
    """The run's files that exist, in the order a person reads them (report first, the state last)."""
    order = ["report.md", "report.json", "student.onnx", "student.int8.onnx", "student.pt", "teacher.onnx",
             "metrics.jsonl", "figures/", "train_state.pt"]
    present = {n.split("/")[0] + ("/" if "/" in n else "") for n in paths.names if (paths.folder / n).exists()}
    return [n for n in order if n in present]


def _inputs(teacher_path: Path, recipe: Recipe, trust_teacher: bool) -> tuple[DataBundle, LoadedModel]:
    """The recipe's data and the teacher, which may bring its own normalisation."""
    teacher, data = load_teacher(teacher_path, recipe.teacher.arch, load_data(recipe.data, recipe.seed),
                                 trust=trust_teacher, arch_given=teacher_arch_given(recipe))
    if data.preprocess.normalisation == "teacher":
        console.print(f"normalising with the teacher's own mean {list(data.mean)} / std {list(data.std)} (it records "
                      "them; set data.mean and data.std to override)")
    console.print(f"data: {data.loader} loader ({data.loader_reason})")
    return data, teacher


def _pairs(recipe: Recipe, teacher: LoadedModel, grown: Student, data: DataBundle, dev) -> list[Pair]:
    """The attention pairs, printed with the run's summary line."""
    student = grown.model
    uses_pairs = {"at", "feature"} & set(recipe.methods())  # the methods that read the attention points
    pairs = find_pairs(recipe.distill.at.pairs, teacher.model, student, data.input_shape) if uses_pairs else []
    console.print(
        f"distilling [bold]{grown.arch}[/] ({count_params(student) / 1e6:.3f}M params) from [bold]{teacher.arch}[/] "
        f"({count_params(teacher.model) / 1e6:.3f}M, {teacher.source}) on {data.name}: {len(data.train)} train images, "
        f"{recipe.train.epochs} epochs, methods {'+'.join(recipe.methods()) or 'none (student alone)'}, device {dev}"
    )
    for pair in pairs:
        t, s = pair.teacher, pair.student
        console.print(f"  attention pair: teacher {t.module} {list(t.shape)} <-> student {s.module} {list(s.shape)}")
    for role, model, points in (("teacher", teacher.model, [p.teacher for p in pairs]),
                                ("student", student, [p.student for p in pairs])):
        for path in modified_in_place(model, [p.module for p in points], data.input_shape):
            console.print(f"  {role} point {path}: a later in-place op (e.g. ReLU(inplace=True)) changes its output; "
                          "the output as the module returns it is copied for the loss")
    return pairs


def _test_and_save(result: FitResult, grown: Student, teacher: LoadedModel, teacher_path: Path, data: DataBundle,
                   recipe: Recipe, out: Path, dev) -> dict:
    """Both models' PyTorch test accuracy (the student's top-1 per image too); writes student.pt."""
    test_batches = batches_for(data.test, data, dev, recipe, result.eval_batch)
    teacher_model = teacher.model.to(dev, memory_format=memory_format(recipe.train.channels_last))
    t_test = evaluate(teacher_model, test_batches, dev)
    s_test = evaluate(result.model, test_batches, dev, predictions=True)
    ck = ckpt_io.model_checkpoint(
        result.model, **grown.checkpoint_fields(), classes=data.classes, input_shape=data.input_shape,
        mean=data.mean, std=data.std, dataset=data.name, preprocess=data.preprocess.to_dict(), kind="student",
        metrics={"test_accuracy": s_test["accuracy"], "best_epoch": result.best_epoch,
                 "val_accuracy": result.best_val_accuracy, "epochs": recipe.train.epochs},
        teacher={"path": str(teacher_path), "arch": teacher.arch, "test_accuracy": t_test["accuracy"]},
        recipe=recipe.model_dump(mode="json"),
    )
    ckpt_io.save(ck, out / "student.pt")
    console.print(f"test accuracy (PyTorch): teacher {t_test['accuracy']:.2f}%, student {s_test['accuracy']:.2f}%")
    return {"teacher": t_test, "student": s_test}


def _report(recipe: Recipe, teacher: LoadedModel, teacher_path: Path, grown: Student, data: DataBundle,
            pairs: list[Pair], result: FitResult, tested: dict, verified: Verification, parallel: dict, dev,
            started: float, refreshed: BatchNormRefresh | None = None) -> DistillReport:
    """report.json, from the stages' results."""
    model = result.model
    acc = verified.onnx_accuracy
    return DistillReport(
        passed=all(g.passed for g in verified.gates),
        recipe=recipe.name,
        teacher=ModelEntry(arch=teacher.arch, source=teacher.source, path=str(teacher_path),
                           params=count_params(teacher.model), flops=count_flops(teacher.model, data.input_shape),
                           accuracy=tested["teacher"]["accuracy"], onnx_accuracy=acc["teacher"]),
        student=ModelEntry(arch=grown.arch, params=count_params(model), flops=count_flops(model, data.input_shape),
                           accuracy=tested["student"]["accuracy"], onnx_accuracy=acc["student"], sizing=grown.sizing),
        data=DataSection(name=data.name, train=len(data.train), val=len(data.val) if data.val else 0,
                         test=len(data.test), classes=data.classes, mean=list(data.mean), std=list(data.std),
                         loader=data.loader, loader_reason=data.loader_reason,
                         normalisation=data.preprocess.normalisation, preprocess=data.preprocess.metadata()),
        distillation=Distillation(
            methods=recipe.methods(),
            pairs=[pair.describe() for pair in pairs],
            beta=recipe.distill.at.beta if "at" in recipe.methods() else None,
            epochs=recipe.train.epochs,
            best_epoch=result.best_epoch,
            val_accuracy=result.best_val_accuracy,
            train_seconds=result.train_seconds,
            images_per_second=result.images_per_second,
            batch_size=recipe.train.batch_size,
            lr=recipe.train.lr,
            resumed_from_epoch=result.resumed_from,
            first_step_seconds=result.first_step_at - started if result.first_step_at is not None else None,
            amp=result.amp,
            bn_recalibrated=refreshed,
            history=result.history,
        ),
        distributed=parallel,  # world size, global and per-rank batch, the lr they were trained with
        export=verified.export, latency=verified.latency, int8=verified.int8, shipped=verified.shipped,
        gates=verified.gates,
        environment={**environment(dev), "onnxruntime_provider": verified.latency.provider},
        wall_seconds=time.perf_counter() - started,
    )
