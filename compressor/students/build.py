"""The student: named in the recipe, sized within the teacher's family from scratch, or grown from the teacher.

`build_student(recipe, teacher, data)` decides and builds it; the decision and its reason are printed and go into
report.json (`student.sizing`). `student.init`:
- `teacher`: the teacher with channels pruned (pruning.py) to `student.size`, BatchNorm recalibrated;
- `scratch`: the largest network of the teacher's family under `student.size` (sizing.py), freshly initialised;
- `auto` (default): `teacher` when the student is sized and the teacher can be pruned, else `scratch` with one
  line saying why. A named `student.arch` is always a scratch student.
A latency target (`student.latency` / `latency_ms`) always grows the student from the teacher: candidates in width
and depth are timed on the deployment runtime (search.py, with the `timer` the job passes in).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from compressor.core.errors import UserError
from compressor.core.memory import fitting_batch
from compressor.core.progress import console
from compressor.data.batches import make_batches
from compressor.data.splits import DataBundle
from compressor.models import checkpoint as ckpt_io
from compressor.models import create_model, is_registered
from compressor.models.batchnorm import recalibrate_bn
from compressor.models.evaluate import evaluate
from compressor.models.measure import count_flops, count_params, footprint
from compressor.models.plan import IDENTITY, apply_channel_plan, state_shapes
from compressor.recipe.schema import Recipe
from compressor.students.pruning import (
    CannotPrune,
    channel_plan,
    grow_student,
    taylor_grads,
)
from compressor.students.results import LatencySearch
from compressor.students.search import Measured, search_student
from compressor.students.sizing import choose_student_size, parse_flops, parse_size
from compressor.teachers.load import LoadedModel

# teacher sources whose architecture the registry rebuilds (a pruned student must reload from plain data)
REBUILDABLE = ("compressor checkpoint", "state_dict", "architecture (untrained)")
CALIBRATION_BATCH = 128  # calibration images a batch (fewer where the images are too large for memory)
TAYLOR_IMAGES = 512  # the first calibration images score the channels (all of them recalibrate BatchNorm)
EVAL_BATCH = 512
SEARCH_CALIBRATION_IMAGES = 512  # a latency search recalibrates each candidate's BatchNorm on these (the chosen
SEARCH_ACCURACY_IMAGES = 2000  # one on all of them) and ranks the candidates by accuracy on these


@dataclass
class Student:
    model: nn.Module
    arch: str  # what the report calls it: a registered name, or "<base>-pruned"
    base_arch: str  # the registered architecture the checkpoint rebuilds
    plan: dict | None  # the channel plan of a pruned student (pruning.channel_plan), None for a plain one
    sizing: dict

    def checkpoint_fields(self) -> dict:
        """What a checkpoint needs to rebuild this student: `arch` (+ `pruned`)."""
        return {"arch": self.base_arch, **({"pruned": self.plan} if self.plan is not None else {})}


def why_not_prunable(teacher: LoadedModel) -> str | None:
    if teacher.source not in REBUILDABLE:
        return (f"the teacher is a {teacher.source}, and a pruned student must be rebuilt from a registered "
                "architecture when it is loaded")
    if not is_registered(teacher.arch):
        return f"its architecture {teacher.arch!r} is not registered, so a pruned student could not be rebuilt"
    return None


def build_student(recipe: Recipe, teacher: LoadedModel, data: DataBundle, saved: dict | None = None,
                  timer: Callable[[], Callable[[nn.Module], Measured]] | None = None) -> Student:
    """saved: the `student` entry of an interrupted run's training state (resume rebuilds that very student).
    timer: for a latency target, makes the function that exports and times a candidate (verify.candidates)."""
    cfg = recipe.student
    shape = data.input_shape
    if saved is not None and saved.get("plan") is not None:
        return _rebuild(saved, data)
    if cfg.latency_target():
        why_not = why_not_prunable(teacher)
        if why_not is not None:
            raise UserError(f"student.latency: the student is grown from the teacher and timed, but {why_not}")
        if timer is None:
            raise ValueError("a latency target needs a timer")
        try:
            return _grow(recipe, teacher, data, timer)
        except CannotPrune as e:
            raise UserError(f"student.latency: the pruner cannot handle this teacher's graph ({e})") from None
    if cfg.arch:
        model = create_model(cfg.arch, data.num_classes, shape[0])
        return Student(model, cfg.arch, cfg.arch, None,
                       {"how": "named", "init": "scratch", "arch": cfg.arch, "reason": "named in the recipe"})
    why_not = why_not_prunable(teacher) if cfg.init != "scratch" else "student.init: scratch"
    if why_not is None:
        try:
            return _grow(recipe, teacher, data)
        except CannotPrune as e:
            why_not = f"the pruner cannot handle this teacher's graph ({e})"
    if cfg.init == "teacher" or cfg.flops is not None:
        raise UserError(f"student.init: teacher: cannot grow the student from the teacher: {why_not}")
    arch, sizing = choose_student_size(teacher.arch, count_params(teacher.model), cfg.size,
                                       num_classes=data.num_classes, input_shape=shape)
    sizing["init"] = "scratch"
    if cfg.init == "auto":
        sizing["why_scratch"] = why_not
        console.print(f"student.init auto: a scratch student, because {why_not}")
    console.print(f"student size {sizing['target']}: {sizing['reason']}; {sizing['flops'] / 1e6:.2f}M FLOPs / image")
    return Student(create_model(arch, data.num_classes, shape[0]), arch, arch, None, sizing)


def calibration_batches(teacher: nn.Module, data: DataBundle) -> tuple[int, int]:
    """(calibration batch, evaluation batch) on the CPU: up to 128 and 512 images, fewer where large images would
    not fit this machine's memory (the Taylor scores run a training step of the teacher; the accuracy right after
    pruning an inference pass). The recipe's own batch is checked before training."""
    fp = footprint(teacher, data.input_shape)
    cpu = torch.device("cpu")
    return (fitting_batch(2 * fp.outputs, 4 * fp.weights, CALIBRATION_BATCH, cpu),
            fitting_batch(2 * fp.peak, fp.weights, EVAL_BATCH, cpu))


def calibration_sample(recipe: Recipe, data: DataBundle, batch_size: int) -> tuple[int, Callable[[], Iterator]]:
    """A seeded sample of un-augmented training images: (its size, a function that yields it as normalised
    (images, labels) batches on the CPU). One batch is decoded and held at a time, whatever the sample's size."""
    n = min(recipe.student.calibration_images, len(data.train))
    g = torch.Generator().manual_seed(recipe.seed + 7919)
    idx = torch.randperm(len(data.train), generator=g)[:n]
    normalize = data.normalize(torch.device("cpu"))

    def batches():
        for images, labels in data.train.take_batches(idx, batch_size, recipe.data.workers):
            yield normalize(images), labels

    return n, batches


def _first_images(batches: Iterator, n: int) -> Iterator:
    """The batches that hold the first `n` images."""
    seen = 0
    for x, y in batches:
        if seen >= n:
            return
        seen += len(y)
        yield x, y


def _target(amount, parse, teacher_value: int, key: str, unit: str) -> int | None:
    """student.size / student.flops as a number (a fraction of the teacher's, or a count); None when not set."""
    if amount is None:
        return None
    kind, value = parse(amount)
    target = int(value * teacher_value) if kind == "fraction" else int(value)
    if target >= teacher_value:
        raise UserError(f"{key}: {amount} means {target:,} {unit}, not fewer than the teacher's {teacher_value:,}")
    return target


def _grow(recipe: Recipe, teacher: LoadedModel, data: DataBundle, timer=None) -> Student:
    cfg = recipe.student
    full = count_params(teacher.model)
    t_flops = count_flops(teacher.model, data.input_shape)
    target = _target(cfg.size, parse_size, full, "student.size", "parameters")
    target_flops = _target(cfg.flops, parse_flops, t_flops, "student.flops", "FLOPs")
    started = time.perf_counter()
    calib_batch, eval_batch = calibration_batches(teacher.model, data)
    n_calib, calib = calibration_sample(recipe, data, calib_batch)
    torch.manual_seed(recipe.seed)
    search = None
    if cfg.latency_target():
        model, info, search = _latency_search(recipe, teacher, data, calib, eval_batch, target, target_flops, timer)
    else:
        model, info = grow_student(
            teacher.model, target, target_flops=target_flops, input_shape=data.input_shape,
            num_classes=data.num_classes, criterion=cfg.criterion, keep_stem=cfg.keep_stem, round_to=cfg.round_to,
            global_ranking=cfg.allocation == "global", grad_batches=lambda: _first_images(calib(), TAYLOR_IMAGES),
        )
    recalibrate_bn(model, calib())  # every BN's statistics anew: the plain average over the batches
    model.eval()
    base = create_model(teacher.arch, data.num_classes, data.input_shape[0])
    plan = channel_plan(model, base)
    seconds = time.perf_counter() - started
    test = make_batches(data.test, eval_batch, data.normalize(torch.device("cpu")), workers=recipe.data.workers)
    pruned_acc = evaluate(model, test, torch.device("cpu"))["accuracy"]
    flops = count_flops(model, data.input_shape)
    arch = ckpt_io.pruned_name(teacher.arch)
    limits = ", ".join(t for t in (target and f"target {target:,} parameters",
                                   target_flops and f"{target_flops:,} FLOPs",
                                   search and _latency_limit(search)) if t)
    how = "of each channel group" if cfg.allocation == "uniform" else "of all channels, ranked globally,"
    removed = 1 - _channels(model) / _channels(teacher.model)
    blocks = [n for n, a in plan.items() if IDENTITY in a]
    depth = f"{len(blocks)} residual blocks removed ({', '.join(blocks)}) and " if blocks else ""
    reason = (f"{teacher.arch} pruned by {cfg.criterion} importance, {depth}{removed:.1%} {how} "
              f"removed{' (stem kept)' if cfg.keep_stem else ''}: {info['params']:,} parameters "
              f"({info['params'] / full:.1%} of the teacher), {flops / t_flops:.1%} of its FLOPs ({limits})")
    sizing = {
        "how": "pruned", "init": "teacher", "arch": arch, "base_arch": teacher.arch,
        "target": str(cfg.size) if cfg.size is not None else None, "target_params": target,
        "flops_target": cfg.flops, "target_flops": target_flops, "params": info["params"], "flops": flops,
        "teacher_params": full, "teacher_flops": t_flops, "fraction_of_teacher": info["params"] / full,
        "criterion": cfg.criterion, "allocation": cfg.allocation, "ratio": info["ratio"], "keep_stem": cfg.keep_stem,
        "channels_removed": removed,
        "round_to": info.get("round_to", cfg.round_to), "calibration_images": n_calib, "pruned_modules": len(plan),
        "accuracy_after_pruning": pruned_acc, "seconds": seconds, "reason": reason, "removed_blocks": blocks,
    }
    if search is not None:
        sizing.update(latency_target=cfg.latency, latency_ms_target=cfg.latency_ms, latency_batch=cfg.latency_batch,
                      search=search.model_dump(mode="json"))
    console.print(f"student grown from the teacher: {reason}; test accuracy right after pruning and BN "
                  f"recalibration {pruned_acc:.2f}% ({seconds:.1f} s)")
    return Student(model, arch, teacher.arch, plan, sizing)


def _latency_limit(search: LatencySearch) -> str:
    chosen = next(c for c in search.candidates if c.chosen)
    return (f"measured {chosen.latency_ratio:.3f} of the teacher's p50 ({1 / chosen.latency_ratio:.2f}x faster) at "
            f"batch {search.batch}, chosen of {len(search.candidates)} candidates in {search.seconds:.0f} s")


def _latency_search(recipe: Recipe, teacher: LoadedModel, data: DataBundle, calib, eval_batch: int,
                    target: int | None, target_flops: int | None, timer):
    """The latency search (search.py) on the run's calibration sample; accuracy on validation images."""
    cfg = recipe.student
    grads = None
    if cfg.criterion == "taylor":
        grads = taylor_grads(teacher.model.cpu().eval(), _first_images(calib(), TAYLOR_IMAGES))
    split, on = (data.val, "validation") if data.val is not None and len(data.val) else (data.train, "training")
    n = min(SEARCH_ACCURACY_IMAGES, len(split))
    normalize = data.normalize(torch.device("cpu"))
    accuracy_batches = [(normalize(x), y) for x, y in split.take_batches(torch.arange(n), eval_batch,
                                                                        recipe.data.workers)]
    on = f"{n} {on} images" + (" (the split has no validation part)" if on == "training" else "")
    model, chosen, search = search_student(
        teacher.model, input_shape=data.input_shape, num_classes=data.num_classes, cfg=cfg, measure=timer(),
        calibration=lambda: _first_images(calib(), SEARCH_CALIBRATION_IMAGES), accuracy_batches=accuracy_batches,
        accuracy_on=on, grads=grads, target_params=target, target_flops=target_flops,
        ranking_batches=_first_images(calib(), TAYLOR_IMAGES))
    info = {"params": chosen.params, "ratio": chosen.width_ratio, "round_to": chosen.round_to}
    return model, info, search


def _channels(model: nn.Module) -> int:
    """Every convolution's output channels, summed: what "channels removed" is a fraction of."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def _rebuild(saved: dict, data: DataBundle) -> Student:
    """The pruned student of an interrupted run, from its saved channel plan (its weights come from the state)."""
    base = create_model(saved["base_arch"], data.num_classes, data.input_shape[0])
    model = apply_channel_plan(base, saved["plan"], saved["shapes"])
    return Student(model, saved["arch"], saved["base_arch"], saved["plan"], dict(saved["sizing"]))


def saved_entry(student: Student) -> dict:
    """What the training state keeps so that --resume rebuilds the same student without pruning again."""
    return {"arch": student.arch, "base_arch": student.base_arch, "plan": student.plan, "sizing": student.sizing,
            "shapes": state_shapes(student.model.state_dict()) if student.plan is not None else None}


