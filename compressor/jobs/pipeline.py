"""The jobs behind the commands: train a teacher, and distil + export + verify a student.

Each job is a plain function the CLI calls after parsing; it raises `UserError` for bad input and
`GateFailure` (after every artifact is written) when a verification gate fails.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from compressor.models import checkpoint as ckpt_io
from compressor.core import distributed, runlock
from compressor.data.datasets import Batches, DataBundle, Normalize, load_data, make_batches
from compressor.core.device import environment, memory_format, resolve_device, seed_everything
from compressor.core.errors import GateFailure, Interrupted, UserError
from compressor.core.errors import first_line
from compressor.distill.pairs import find_pairs
from compressor.distill.points import all_points, modified_in_place, probe_points
from compressor.core.fileio import remove_stale_temporaries, write_json, write_text
from compressor.models import create_model
from compressor.core.progress import TrainProgress, console
from compressor.recipe.schema import Recipe, teacher_arch_given
from compressor.export.runtime import require_provider
from compressor.teachers.load import Teacher, load_teacher, open_model
from compressor.train.loop import fit
from compressor.models.evaluate import evaluate
from compressor.students.build import build_student, saved_entry
from compressor.verify.student import verify_student
from compressor.models.measure import count_flops, count_params

FINISHED_MARKER = "report.json"
# what `compress distill` writes into --out (and figures/), whose leftover temporaries a new run may remove
RUN_FILES = ("train_state.pt", "metrics.jsonl", "student.pt", "student.onnx", "teacher.onnx", "student.int8.onnx",
             "report.json", "report.md")
FIGURE_FILES = ("attention.png", "curves.png", "latency.png")


@dataclass
class RunPaths:
    out: Path

    @property
    def state(self) -> Path:
        return self.out / "train_state.pt"

    @property
    def metrics(self) -> Path:
        return self.out / "metrics.jsonl"


@dataclass
class _Claim:
    """This process's hold on an output: the lock, and whether the run created the folder (so a run refused
    after set-up can remove what it made and nothing else)."""

    lock: Path
    fd: int
    created: Path | None

    def release(self, failed: bool) -> None:
        runlock.release(self.lock, self.fd)
        if failed and self.created is not None:
            _remove_if_empty(self.created)


def _remove_if_empty(folder: Path) -> None:
    """Remove a folder this run created if nothing of substance is in it (only empty files and folders)."""
    try:
        entries = list(folder.rglob("*"))
        if any(e.is_symlink() or (e.is_file() and e.stat().st_size > 0) or not (e.is_file() or e.is_dir())
               for e in entries):
            return
        for e in sorted(entries, key=lambda e: len(e.parts), reverse=True):
            e.unlink() if e.is_file() else e.rmdir()
        folder.rmdir()
    except OSError:  # someone else's file appeared, or permissions: leave it all
        pass


def _claim(folder: Path, lock_name: str, target: Path, check) -> _Claim:
    """Create `folder` if needed and lock it for `target` (a second run into it refuses at once, naming this
    one); then run `check` (what the folder already holds may refuse the run) under the lock."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out: {folder} exists and is not a directory")
    created = None if folder.exists() else next((p for p in [folder, *folder.parents] if p.parent.exists()), folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out: cannot create {folder} ({e.strerror})") from None
    claim = _Claim(folder / lock_name, -1, created)
    try:
        claim.fd = runlock.acquire(claim.lock, "--out", target)
    except UserError:
        if created is not None:
            _remove_if_empty(created)
        raise
    try:
        check()
        _check_writable(folder)
    except BaseException:
        claim.release(failed=True)
        raise
    return claim


def _claim_out_dir(out: Path, *, resume: bool, force: bool) -> _Claim:
    """`distill`'s --out: locked, and a finished run is not clobbered nor an unfinished one silently restarted."""
    return _claim(out, runlock.LOCK_NAME, out, lambda: _check_out_dir(out, resume=resume, force=force))


def _claimed(claim: _Claim | None, body, state: Path):
    """Run `body` holding `claim`; let go of it however body ends. Ctrl-C / SIGTERM outside the training loop
    (which says it itself) becomes `Interrupted` saying how to go on from the training `state`, if any."""
    ok = False
    try:
        result = body()
        ok = True
        return result
    except GateFailure:
        ok = True  # a finished run: every artifact is written
        raise
    except KeyboardInterrupt:
        how = (f"{state} holds the training state: run the same command with --resume to go on from it (a finished "
               "training is not repeated)" if state.exists() else "no training state was saved yet: run it again")
        raise Interrupted(f"interrupted; files being written were discarded, finished ones are complete; {how}") from None
    finally:
        if claim is not None:
            claim.release(failed=not ok)


def _check_out_dir(out: Path, *, resume: bool, force: bool) -> None:
    finished = (out / FINISHED_MARKER).exists()
    unfinished = (out / "train_state.pt").exists()
    if finished and not force and not resume:
        raise UserError(f"--out: {out} holds a finished run ({FINISHED_MARKER}); pass --force to overwrite it")
    if unfinished and not finished and not resume and not force:
        raise UserError(f"--out: {out} holds an unfinished run; pass --resume to continue it or --force to start over")


def _check_writable(out: Path) -> None:
    probe = out / ".compressor-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out: {out} is not writable ({e.strerror})") from None


def _remove_leftovers(folder: Path, names) -> None:
    removed = remove_stale_temporaries(folder, names)
    if removed:
        console.print(f"removed {len(removed)} temporary file(s) left in {folder} by an interrupted run: "
                      + ", ".join(p.name for p in removed))


def _batches_for(split, data: DataBundle, device, recipe: Recipe, batch_size: int = 512) -> Batches:
    """The test split in the training's memory format (channels_last: 10,000 test images through the
    WRN-16-2 teacher took 23 s instead of 36 s here)."""
    fmt = memory_format(recipe.train.channels_last)
    return make_batches(split.to(device), batch_size, Normalize(data.mean, data.std, device, fmt),
                        workers=recipe.data.workers, device=device)


def train_teacher(recipe: Recipe, out: Path, *, device: str | None = None, resume: bool = False, force: bool = False) -> dict:
    """`compress train`: train the recipe's teacher from scratch; writes a self-describing checkpoint."""
    if out.exists() and out.is_dir():
        raise UserError(f"--out: {out} is a directory; give the checkpoint's file name (e.g. {out}/teacher.pt)")
    state_path = out.with_name(out.name + ".state")
    metrics_path = out.with_name(out.stem + ".metrics.jsonl")

    def check() -> None:
        if out.exists() and not force and not resume:
            raise UserError(f"--out: {out} exists; pass --force to overwrite it")
        if state_path.exists() and not resume and not force:
            raise UserError(f"--out: an unfinished training of {out} exists ({state_path}); pass --resume or --force")

    dev = distributed.setup(resolve_device(device or recipe.device), recipe)  # joins torchrun's processes, if any
    claim = distributed.on_main(_claim, out.parent, f".{out.name}.lock", out, check)
    return _claimed(claim, lambda: _train_teacher(recipe, out, dev, state_path, metrics_path, resume), state_path)


def _train_teacher(recipe: Recipe, out: Path, dev, state_path: Path, metrics_path: Path, resume: bool) -> dict:
    distributed.on_main(_remove_leftovers, out.parent, (out.name, state_path.name, metrics_path.name))
    seed_everything(recipe.seed)
    data = load_data(recipe.data, recipe.seed)
    model = create_model(recipe.teacher.arch, data.num_classes, data.input_shape[0])
    epochs = recipe.teacher.epochs or recipe.train.epochs
    console.print(
        f"training teacher [bold]{recipe.teacher.arch}[/] ({count_params(model) / 1e6:.2f}M params) on "
        f"{data.name}: {len(data.train)} train / {len(data.val) if data.val else 0} val / {len(data.test)} test images, "
        f"{epochs} epochs, device {dev}"
    )
    result = fit(
        model, data, recipe, device=dev, state_path=state_path, metrics_path=metrics_path, role="teacher",
        epochs=epochs, resume=resume, progress=TrainProgress("teacher") if distributed.is_main() else None,
    )
    if not distributed.finish():  # the other ranks are done; rank 0 tests and saves
        return {}
    test = evaluate(result.model, _batches_for(data.test, data, dev, recipe), dev)
    ck = ckpt_io.model_checkpoint(
        result.model, arch=recipe.teacher.arch, classes=data.classes, input_shape=data.input_shape,
        mean=data.mean, std=data.std, dataset=data.name, kind="teacher",
        metrics={"test_accuracy": test["accuracy"], "best_epoch": result.best_epoch,
                 "val_accuracy": result.best_val_accuracy, "epochs": epochs},
        recipe=recipe.model_dump(mode="json"),
    )
    ckpt_io.save(ck, out)
    console.print(f"teacher test accuracy {test['accuracy']:.2f}% (best epoch {result.best_epoch}); wrote {out}")
    return {"path": str(out), "test_accuracy": test["accuracy"], "best_epoch": result.best_epoch}


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
) -> dict:
    """`compress distill`: the main job. Returns the report; raises GateFailure after writing it if a gate fails."""
    started = time.perf_counter()
    paths = RunPaths(out)
    require_provider(device or recipe.device)  # before any work: verification opens sessions on this device
    dev = distributed.setup(resolve_device(device or recipe.device), recipe)  # joins torchrun's processes, if any
    parallel = distributed.describe(recipe.train)
    claim = distributed.on_main(_claim_out_dir, out, resume=resume, force=force)
    return _claimed(claim, lambda: _distill(teacher_path, recipe, out, dev, parallel, started, resume, trust_teacher),
                    paths.state)


def _distill(teacher_path: Path, recipe: Recipe, out: Path, dev, parallel, started: float, resume: bool,
             trust_teacher: bool) -> dict:
    paths = RunPaths(out)
    distributed.on_main(_remove_leftovers, out, RUN_FILES)
    distributed.on_main(_remove_leftovers, out / "figures", FIGURE_FILES)
    seed_everything(recipe.seed)
    data = load_data(recipe.data, recipe.seed)
    teacher = load_teacher(teacher_path, recipe.teacher.arch, data, trust=trust_teacher,
                           arch_given=teacher_arch_given(recipe), normalisation_given=recipe.data.mean is not None)
    if data.info.get("normalisation") == "teacher":
        console.print(f"normalising with the teacher's own mean {list(data.mean)} / std {list(data.std)} (it records "
                      "them; set data.mean and data.std to override)")
    console.print(f"data: {data.info['loader']} loader ({data.info['loader_reason']})")
    grown = build_student(recipe, teacher, data, saved=_saved_student(paths, resume))
    student, student_arch, sizing = grown.model, grown.arch, grown.sizing
    at_on = recipe.distill.at.enabled and recipe.distill.at.beta > 0
    uses_pairs = at_on or (recipe.distill.feature.enabled and recipe.distill.feature.beta > 0)  # AT and F-ActT
    pairs = find_pairs(recipe.distill.at.pairs, teacher.model, student, data.input_shape) if uses_pairs else []
    console.print(
        f"distilling [bold]{student_arch}[/] ({count_params(student) / 1e6:.3f}M params) from [bold]{teacher.arch}[/] "
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
    initial_student = {k: v.detach().clone() for k, v in student.state_dict().items()}  # the "before" figure
    result = fit(
        student, data, recipe, device=dev, state_path=paths.state, metrics_path=paths.metrics, role="distill",
        teacher=teacher.model, pairs=pairs, resume=resume,
        progress=TrainProgress("distill") if distributed.is_main() else None,
        checkpoint_extra=lambda: {"student": saved_entry(grown)},
    )
    if not distributed.finish():  # the other ranks are done; rank 0 tests, exports, verifies and reports
        return {}
    test_batches = _batches_for(data.test, data, dev, recipe)
    teacher_model = teacher.model.to(dev, memory_format=memory_format(recipe.train.channels_last))
    t_test = evaluate(teacher_model, test_batches, dev)
    s_test = evaluate(result.model, test_batches, dev, predictions=True)
    ck = ckpt_io.model_checkpoint(
        result.model, **grown.checkpoint_fields(), classes=data.classes, input_shape=data.input_shape,
        mean=data.mean, std=data.std, dataset=data.name, kind="student",
        metrics={"test_accuracy": s_test["accuracy"], "best_epoch": result.best_epoch,
                 "val_accuracy": result.best_val_accuracy, "epochs": recipe.train.epochs},
        teacher={"path": str(teacher_path), "arch": teacher.arch, "test_accuracy": t_test["accuracy"]},
        recipe=recipe.model_dump(mode="json"),
    )
    ckpt_io.save(ck, out / "student.pt")
    console.print(f"test accuracy (PyTorch): teacher {t_test['accuracy']:.2f}%, student {s_test['accuracy']:.2f}%")

    report = {
        "passed": None,
        "recipe": recipe.name,
        "teacher": {
            "arch": teacher.arch, "source": teacher.source, "path": str(teacher_path),
            "params": count_params(teacher.model), "flops": count_flops(teacher.model, data.input_shape),
            "accuracy": t_test["accuracy"], "onnx_accuracy": None,
        },
        "student": {
            "arch": student_arch, "params": count_params(result.model),
            "flops": count_flops(result.model, data.input_shape), "accuracy": s_test["accuracy"],
            "onnx_accuracy": None, "sizing": sizing,
        },
        "data": {"name": data.name, "train": len(data.train), "val": len(data.val) if data.val else 0,
                 "test": len(data.test), "classes": data.classes, "mean": list(data.mean), "std": list(data.std),
                 "loader": data.info.get("loader"), "loader_reason": data.info.get("loader_reason"),
                 "normalisation": data.info.get("normalisation", "dataset")},
        "distillation": {
            "methods": recipe.methods(),
            "pairs": [pair.describe() for pair in pairs],
            "beta": recipe.distill.at.beta if at_on else None,
            "epochs": recipe.train.epochs,
            "best_epoch": result.best_epoch,
            "val_accuracy": result.best_val_accuracy,
            "train_seconds": result.train_seconds,
            "images_per_second": result.images_per_second,
            "batch_size": recipe.train.batch_size,
            "lr": recipe.train.lr,
            "resumed_from_epoch": result.resumed_from,
            "first_step_seconds": result.first_step_at - started if result.first_step_at is not None else None,
            "amp": result.amp,
            "history": result.history,
        },
    }
    report["distributed"] = parallel  # world size, global and per-rank batch, the lr they were trained with
    report.update(verify_student(result.model, teacher.model, data, recipe, out, report, dev,
                                 torch_predictions=s_test["predictions"]))
    report["environment"] = {**environment(dev), "onnxruntime_provider": report["latency"]["provider"]}
    report["wall_seconds"] = time.perf_counter() - started
    report["passed"] = all(g["passed"] for g in report["gates"])
    from compressor.report.figures import write_figures

    report["figures"] = write_figures(out, report, teacher.model, result.model, initial_student, data, recipe, pairs)

    from compressor.report.markdown import print_summary, render_markdown

    write_text(out / "report.md", render_markdown(report))
    write_json(out / "report.json", report)
    print_summary(report)
    console.print(f"outputs in {out}/: student.pt, student.onnx, teacher.onnx, report.json, report.md, metrics.jsonl")
    _raise_failed(report["gates"])
    return report


def _raise_failed(gates: list[dict]) -> None:
    """After every artifact is written: exit 1 naming each failed gate."""
    failed = [g for g in gates if not g["passed"]]
    if failed:
        raise GateFailure(*(f"gate {g['name']} failed: value {_fmt(g['value'])}, limit {_fmt(g['limit'])}" for g in failed))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else json.dumps(v)


def export_checkpoint(
    path: Path, out: Path, *, opset: int = 18, max_abs_diff: float = 1e-4, rtol: float = 1e-5,
    input_shape: str | None = None, arch: str | None = None, trust: bool = False, force: bool = False,
) -> dict:
    """`compress export`: a checkpoint to ONNX plus the parity check on real test images of its dataset.

    The other teacher formats (state_dict with `arch`, TorchScript, torch.export, a trusted pickle) export too,
    with the parity check on seeded random inputs of `input_shape` (or the shape the file records)."""
    from compressor.export.onnx import check_parity, export_onnx

    check_output(out, [path], force)
    teacher = open_model(path, arch=arch, input_shape=parse_shape(input_shape), trust=trust, names=False)
    if teacher.source != "compressor checkpoint":
        return _export_model_file(path, teacher, out, opset=opset, max_abs_diff=max_abs_diff, rtol=rtol,
                                  shape=parse_shape(input_shape))
    model, ck = ckpt_io.load_model(path)
    shape = tuple(ck["input_shape"])
    arch_name = f"{ck['arch']}-pruned" if ck.get("pruned") is not None else ck["arch"]  # as distill names it
    meta = {"compressor.arch": arch_name, "compressor.classes": json.dumps(ck["classes"]),
            "compressor.mean": json.dumps(ck["mean"]), "compressor.std": json.dumps(ck["std"]),
            "compressor.input_shape": json.dumps(ck["input_shape"]), "compressor.kind": ck.get("kind", "model")}
    info = export_onnx(model, out, input_shape=shape, opset=opset, metadata=meta)
    images = _parity_images(ck, shape)
    parity = check_parity(model, out, images, batch_sizes=(1, 17))
    info["max_abs_diff"] = parity["max_abs_diff"]
    console.print(f"wrote {out} (opset {opset}, dynamic batch); max |PyTorch - ONNX| = {parity['max_abs_diff']:.2e} "
                  f"on {len(images)} {'test images' if ck.get('dataset') else 'random inputs'}")
    info.update(parity_scale=parity["scale"], parity_tolerance=max_abs_diff + rtol * parity["scale"])
    _parity_verdict(parity, out, "the checkpoint", max_abs_diff, rtol)
    return info


def _parity_verdict(parity: dict, out: Path, what: str, atol: float, rtol: float) -> None:
    limit = atol + rtol * parity["scale"]
    if parity["max_abs_diff"] > limit:
        raise GateFailure(f"gate max_abs_diff failed: {parity['max_abs_diff']:.3g} > {limit:.3g} ({atol:g} + {rtol:g} x "
                          f"largest |logit| {parity['scale']:.3g}); {out} does not compute what {what} does")


def _export_model_file(path: Path, teacher: Teacher, out: Path, *, opset: int, max_abs_diff: float, rtol: float,
                       shape) -> dict:
    from compressor.export.onnx import check_parity, export_onnx
    from compressor.verify.student import PARITY_IMAGES

    shape = shape or teacher.native_shape
    if shape is None:
        raise UserError(f"{path}: the file does not record its input shape; give --input-shape C,H,W")
    meta = {"compressor.arch": teacher.arch, "compressor.kind": "model", "compressor.source": teacher.source,
            "compressor.input_shape": json.dumps(list(shape))}
    info = export_onnx(teacher.model, out, input_shape=shape, opset=opset, metadata=meta)
    images = torch.randn(PARITY_IMAGES, *shape, generator=torch.Generator().manual_seed(0))
    parity = check_parity(teacher.model, out, images, batch_sizes=(1, 17))
    info["max_abs_diff"] = parity["max_abs_diff"]
    console.print(f"wrote {out} (opset {opset}, dynamic batch) from {teacher.source} {path}; "
                  f"max |PyTorch - ONNX| = {parity['max_abs_diff']:.2e} on {len(images)} random inputs")
    info.update(parity_scale=parity["scale"], parity_tolerance=max_abs_diff + rtol * parity["scale"])
    _parity_verdict(parity, out, str(path), max_abs_diff, rtol)
    return info


def _parity_images(ck: dict, shape) -> torch.Tensor:
    """Real test images of the checkpoint's dataset when they are at hand, else seeded random inputs."""
    from compressor.recipe.schema import DataConfig
    from compressor.verify.student import PARITY_IMAGES

    try:
        data = load_data(DataConfig(name=ck.get("dataset", ""), limit_test=PARITY_IMAGES, val_fraction=0.0), 0)
        if data.input_shape == shape:
            return Normalize(data.mean, data.std, torch.device("cpu"))(data.test.take(torch.arange(len(data.test))).images).contiguous()
    except (UserError, ValueError):  # another dataset, or not on this machine
        pass
    return torch.randn(PARITY_IMAGES, *shape, generator=torch.Generator().manual_seed(0))


def check_output(out: Path, inputs: list[Path | None], force: bool) -> None:
    """A command's output file: never one of its inputs (that would destroy what it reads), and an existing
    regular file only with --force."""
    for given in inputs:
        if given is not None and given.exists() and out.exists() and out.resolve() == given.resolve():
            raise UserError(f"--out: {out} is the input {given}; writing it would replace the file being read "
                            "(give another --out)")
    if out.is_dir():
        raise UserError(f"--out: {out} is a directory; give a file name")
    if out.is_file() and not force:  # a device (/dev/null) is written in place, nothing is replaced
        raise UserError(f"--out: {out} exists; pass --force to overwrite it")


def _metadata(session) -> dict[str, str]:
    return dict(session.inner.get_modelmeta().custom_metadata_map or {})


def _model_input(session, data: DataBundle) -> dict:
    """What the model's own compressor.* metadata says it takes, checked against the recipe's data: the class
    list and image shape must agree (else the scores would be meaningless); the normalisation it was trained
    with is the one it is fed with. A model without metadata is fed the data's normalisation."""
    meta, path = _metadata(session), session.path
    try:
        classes = json.loads(meta["compressor.classes"]) if "compressor.classes" in meta else None
        shape = json.loads(meta["compressor.input_shape"]) if "compressor.input_shape" in meta else None
        mean = tuple(json.loads(meta["compressor.mean"])) if "compressor.mean" in meta else None
        std = tuple(json.loads(meta["compressor.std"])) if "compressor.std" in meta else None
    except (ValueError, TypeError):
        raise UserError(f"{path}: its compressor.* metadata is not valid JSON") from None
    if classes is not None and list(classes) != list(data.classes):
        raise UserError(f"{path}: was made for the classes {classes} (its metadata); the recipe's data has "
                        f"{list(data.classes)}")
    if shape is not None and tuple(shape) != tuple(data.input_shape):
        raise UserError(f"{path}: takes {tuple(shape)} images (its metadata); the recipe's data has {data.input_shape}")
    own = mean is not None and std is not None and len(mean) == len(std) == data.input_shape[0]
    return {"mean": list(mean if own else data.mean), "std": list(std if own else data.std),
            "normalisation": "model metadata" if own else "recipe data",
            "arch": meta.get("compressor.arch"), "kind": meta.get("compressor.kind")}


def _reference_parity(reference: Path, model_path: Path, data: DataBundle, fed: dict, accepted: list[int],
                      recipe: Recipe, trust: bool) -> dict:
    """--reference: the ONNX file's logits against the checkpoint's on real test images across the classes."""
    from compressor.export.onnx import check_parity
    from compressor.verify.student import parity_batch_sizes, parity_images

    ref = open_model(reference, input_shape=data.input_shape, trust=trust, names=False)
    if ref.source == "compressor checkpoint":
        model, _ = ckpt_io.load_model(reference)
    else:
        model = ref.model
    images = parity_images(data.test, data, recipe.seed, mean=fed["mean"], std=fed["std"])
    sizes = tuple(b for b in parity_batch_sizes(len(images)) if b in accepted) or (min(accepted),)
    if max(sizes) > len(images):
        raise UserError(f"{model_path}: its batch size {max(sizes)} is more than the {len(images)} parity images")
    try:
        parity = check_parity(model, model_path, images, batch_sizes=sizes)
    except UserError:
        raise
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--reference: {reference} cannot run on the recipe's {data.input_shape} images "
                        f"({first_line(e)})") from None
    console.print(f"parity with {reference}: max |PyTorch - ONNX| = {parity['max_abs_diff']:.2e} on {len(images)} "
                  f"test images (largest |logit| {parity['scale']:.3g})")
    return {**parity, "reference": str(reference)}


def verify_model(model_path: Path, recipe: Recipe, *, baseline: Path | None, out: Path, reference: Path | None = None,
                 force: bool = False, trust: bool = False) -> dict:
    """`compress verify`: ONNX accuracy on the recipe's test split and latency, against a baseline if given, and
    parity with the checkpoint it was exported from if `reference` is given.

    Any ONNX image classifier a user brings is taken: one with a fixed batch is scored and timed at the batch
    size it accepts; one that does not fit the data (image shape, class count, metadata) or does not run is
    refused with one line (exit 2)."""
    from compressor.report.markdown import latency_table
    from compressor.export.runtime import check_onnx_file, create_session, latency_meta, measure_latencies, probe_classifier, speedups
    from compressor.verify.student import _latency_gates, accuracy_of, gate, onnx_split_predictions, parity_gate

    check_output(out, [model_path, baseline, reference], force)
    check_onnx_file(model_path)
    if baseline is not None:
        check_onnx_file(baseline)
    if reference is not None and not reference.is_file():
        raise UserError(f"--reference: {reference}: no such file")
    seed_everything(recipe.seed)
    data = load_data(recipe.data, recipe.seed)
    v = recipe.verify
    result: dict = {"model": str(model_path), "baseline": str(baseline) if baseline else None,
                    "reference": str(reference) if reference else None}
    sessions = {"student": create_session(model_path, threads=v.threads, device=recipe.device)}
    if baseline is not None:
        sessions["teacher"] = create_session(baseline, threads=v.threads, device=recipe.device)
    eval_batch = 256
    fed, runs = {}, {}
    for role, sess in sessions.items():
        fed[role] = _model_input(sess, data)
        runs[role] = probe_classifier(sess, data.input_shape, data.num_classes, [*v.batch_sizes, eval_batch])
    accuracy = {}
    for role, sess in sessions.items():
        batch = eval_batch if eval_batch in runs[role]["accepted"] else max(runs[role]["accepted"])
        predicted = onnx_split_predictions(sess, data.test, data, batch, mean=fed[role]["mean"], std=fed[role]["std"])
        accuracy[role] = accuracy_of(predicted, data.test)
    timed_sizes = [b for b in v.batch_sizes if all(b in r["accepted"] for r in runs.values())]
    skipped = {str(b): next(r["refused"][str(b)] for r in runs.values() if str(b) in r["refused"])
               for b in v.batch_sizes if b not in timed_sizes}
    for b, why in skipped.items():
        console.print(f"batch size {b}: not timed ({why})")
    timed = measure_latencies(sessions, timed_sizes, data.input_shape, warmup=v.warmup, min_runs=v.min_runs,
                              min_seconds=v.min_seconds, seed=recipe.seed, rounds=v.rounds if baseline else 1)
    latency = {**latency_meta(sessions["student"]), "rounds": v.rounds if baseline else 1, **timed,
               "skipped_batch_sizes": skipped}
    if baseline is not None:
        latency["speedup"], latency["speedup_interval"] = speedups(timed["teacher"], timed["student"])
    gates = []
    if reference is not None:
        result["parity"] = _reference_parity(reference, model_path, data, fed["student"], runs["student"]["accepted"],
                                             recipe, trust)
        gates.append(parity_gate("max_abs_diff", result["parity"], v))
    if baseline is not None and v.max_accuracy_drop is not None:
        drop = accuracy["teacher"] - accuracy["student"]
        gates.append(gate("max_accuracy_drop", v.max_accuracy_drop, drop, drop <= v.max_accuracy_drop))
    gates += _latency_gates(v, latency)
    device = "cuda" if sessions["student"].provider == "CUDAExecutionProvider" else "cpu"  # where the sessions ran
    result.update(accuracy={("baseline" if k == "teacher" else "model"): a for k, a in accuracy.items()},
                  test_images=len(data.test), input={("baseline" if k == "teacher" else "model"): f for k, f in fed.items()},
                  batch_sizes={("baseline" if k == "teacher" else "model"): r for k, r in runs.items()},
                  latency=latency, gates=gates, passed=all(g["passed"] for g in gates),
                  environment={**environment(torch.device("cpu")), "device": device,
                               "onnxruntime_provider": sessions["student"].provider})
    write_json(out, result)
    latency_table(result)
    console.print(f"wrote {out}")
    _raise_failed(gates)
    return result


def parse_shape(text: str | None, flag: str = "--input-shape") -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
        assert len(shape) == 3 and min(shape) > 0
    except (ValueError, AssertionError):
        raise UserError(f"{flag}: expected C,H,W such as 3,32,32, got {text!r}") from None
    return shape


def inspect_model(
    model: str, *, input_shape: str | None, num_classes: int = 10, arch: str | None = None, trust: bool = False,
    all_modules: bool = False,
) -> list:
    """`compress inspect`: one dry forward with hooks; prints the candidate attention points (stage outputs) of
    any model `distill` takes as a teacher, or of a registered architecture, or with `all_modules` every
    module with a 4-D output (what explicit pairs may name)."""
    from rich.console import Console
    from rich.table import Table

    shape = parse_shape(input_shape)
    teacher = open_model(model, arch=arch, input_shape=shape, num_classes=num_classes, trust=trust)
    if shape is None:  # the file's own input shape, else 32x32 with the channels its first convolution takes
        shape = teacher.native_shape or ((teacher.input_shape or (None,))[0] or 3, 32, 32)
    try:
        points = (all_points if all_modules else probe_points)(teacher.model, shape)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{model}: cannot run on {shape[0]}x{shape[1]}x{shape[2]} inputs ({first_line(e)}); "
                        "give --input-shape C,H,W") from None
    what = "modules with a 4-D output" if all_modules else "attention points (stage outputs)"
    out = Console(highlight=False)
    out.print(f"{what} of {teacher.arch} ({teacher.source}), input {shape[0]}x{shape[1]}x{shape[2]}:", soft_wrap=True)
    table = Table()
    for h in ("module", "output shape (C, H, W)", "stride"):
        table.add_column(h)
    for p in points:
        table.add_row(p.module, str(tuple(p.shape)), str(p.stride))
    out.print(table)
    if not points:
        console.print(f"{model}: no module of this model outputs a spatial feature map at this input size")
    return points
