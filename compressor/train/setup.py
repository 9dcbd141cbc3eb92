"""Everything a training run holds, made once before its first step: batches, the (wrapped) student, the frozen
teacher and its taps, the objective, the optimizer and its schedule, the precision."""

from __future__ import annotations

import os
import shutil
import signal
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from compressor.core import distributed, memory
from compressor.core.device import amp_choice, autocast, channels_last_safe, memory_format
from compressor.core.errors import Cancelled, Interrupted, UserError
from compressor.core.progress import console
from compressor.data.batches import make_batches
from compressor.distill.objective import Objective
from compressor.distill.pairs import Pair
from compressor.distill.points import FeatureTap
from compressor.models.measure import Footprint, footprint
from compressor.teachers.fold import fold_batchnorm
from compressor.train.optim import build_optimizer


@dataclass
class Training:
    model: nn.Module  # the student (or a teacher trained from scratch) as given: what is saved and evaluated
    net: Callable  # its forward for the steps: DDP-wrapped in a multi-process run, compiled with train.compile
    teacher: nn.Module | None  # frozen, eval mode, BatchNorm folded (a copy: the caller's is not changed)
    teacher_forward: Callable | None
    student_tap: FeatureTap | None  # the attention points' outputs of the latest forward
    teacher_tap: FeatureTap | None
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    train: Any  # Batches or StreamBatches
    val: Any | None
    device: torch.device
    dtype: torch.dtype | None  # the steps' autocast dtype; None: float32
    amp: dict  # the training steps' precision: setting, dtype, reason
    epochs: int
    eval_batch: int  # images a batch for evaluation: up to 512, fewer where they would not fit in memory

    @property
    def teacher_needed(self) -> bool:
        return self.teacher is not None and self.objective.needs_teacher

    def close(self) -> None:
        for tap in (self.student_tap, self.teacher_tap):
            if tap:
                tap.remove()


def compiled(net: nn.Module, teacher: nn.Module | None, enabled: bool):
    """(student forward, teacher forward): through `torch.compile` when enabled, else the modules themselves.

    Measured on the 2-core CPU at 2 threads: +11% on fit()'s distillation step (+26% on the bare step) after a
    10-60 s compile, so worth it only for runs of more than a few minutes; the default is off. Forward hooks (the
    attention points) keep firing. No gain on an H200 for this tiny model (launch-bound).
    """
    if not enabled:
        return net, teacher
    compilers = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    if not any(shutil.which(c) for c in compilers if c):  # inductor builds its kernels with one, on CPU and GPU
        raise UserError("train.compile: torch.compile needs a C++ compiler (g++, c++ or clang++, or $CXX) and none "
                        "was found; install one or set train.compile: false")
    return torch.compile(net), (torch.compile(teacher) if teacher is not None else None)


def check_memory(model: nn.Module | None, teacher: nn.Module | None, input_shape, batch: int, device: torch.device,
                 teacher_graph: bool = False) -> int:
    """Refuse a training batch whose estimated footprint (the student's training step, the frozen teacher's
    forward; its graph too for gradient AT) is more than the device has left: one line with both, before anything
    is allocated. Returns the evaluation batch (up to 512 images) that fits beside it. Without `model` (a student
    not grown yet) the teacher's forward alone is checked: a lower bound, so nothing that would fit is refused."""
    zero = Footprint(0, 0, 0)
    fs = footprint(model, input_shape) if model is not None else zero
    ft = footprint(teacher, input_shape) if teacher is not None else None
    per_image = 2 * fs.outputs + (2 * ft.peak + (ft.outputs if teacher_graph else 0) if ft else 0)
    fixed = 4 * fs.weights + (2 * ft.weights if ft else 0)
    have, _ = memory.available(device)
    shape = "x".join(map(str, input_shape))
    if model is None:
        what, hint = f"the teacher's forward pass alone, on {shape} images", "lower train.batch_size or data.image_size"
    else:
        fits = f" (about {max(0, int((have - fixed) // per_image)):,} fit)" if have is not None else ""
        what = f"a training step of the student{' beside the teacher' if ft else ''} on {shape} images"
        hint = f"lower train.batch_size{fits} or data.image_size"
    memory.require(fixed + batch * per_image, f"train.batch_size: {batch} images a step ({what})", device, hint)
    return memory.fitting_batch(2 * max(fs.peak, ft.peak if ft else 0), fixed, 512, device)


def prepare(model: nn.Module, data, spec, *, device: torch.device, teacher: nn.Module | None,
            pairs: list[Pair]) -> Training:
    """Everything a run holds, from the spec's sections (train.loop.FitSpec): train, data, distill, seed, epochs."""
    cfg = spec.train
    eval_batch = check_memory(model, teacher, data.input_shape, cfg.batch_size // distributed.world_size(), device,
                              teacher_graph="grad_at" in spec.distill.methods() and teacher is not None)
    dtype, amp_reason = amp_choice(cfg.amp, device)
    amp = {"setting": cfg.amp, "dtype": str(dtype).replace("torch.", "") if dtype else "float32", "reason": amp_reason}
    if distributed.is_main():
        console.print(f"training precision: {amp['dtype']} ({amp_reason}); evaluation and export: float32")
    # channels_last where the student's widths are safe for it on this device (device.channels_last_safe)
    fmt = memory_format(cfg.channels_last and (device.type != "cpu" or channels_last_safe(model)))
    normalize = data.normalize(device, fmt)
    # in-memory splits move to the device once; a streamed one is decoded batch by batch by DataLoader workers
    stream = {"workers": spec.data.workers, "device": device}
    train = make_batches(
        data.train.to(device), cfg.batch_size, normalize, train=True, pad=spec.data.pad, flip=spec.data.flip,
        seed=spec.seed, drop_last=len(data.train) >= cfg.batch_size, augment=spec.data.augment,
        rank=distributed.rank(), world=distributed.world_size(), **stream,  # cfg.batch_size is the global batch
    )
    val = (make_batches(data.val.to(device), eval_batch, normalize, **stream)
           if data.val is not None and len(data.val) else None)

    model.to(device=device, memory_format=fmt).train()
    net = distributed.wrap(model, device, cfg.sync_bn)  # DDP around `model` in a multi-process run, else `model`
    if teacher is not None:
        # frozen in eval mode, its BN layers are fixed affine maps: folded into the convs they follow, one pass
        # over each activation disappears (+1-3% on the CPU step at 2 threads, +5-9% at 1 thread on a loaded
        # machine: docs/BENCHMARKS.md); on a copy, so the caller's teacher is not changed; a conv whose own
        # output is an attention point keeps its BN
        teacher = fold_batchnorm(teacher, keep=[p.teacher.module for p in pairs])
    objective = Objective.build(spec.distill, cfg.milestones, model, teacher, pairs, device,
                                autocast=lambda: autocast(device, dtype))
    opt, sched = build_optimizer(objective.optimized(model), cfg, spec.epochs, len(train))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    # the shape lets each tap find points whose output a later in-place op changes, and copy those
    taps = objective.uses_features
    s_tap = FeatureTap(model, [p.student.module for p in pairs], data.input_shape) if taps else None
    t_tap = FeatureTap(teacher, [p.teacher.module for p in pairs], data.input_shape) if taps else None
    if teacher is not None:
        teacher.to(device=device, memory_format=fmt).eval()
        for p_ in teacher.parameters():
            p_.requires_grad_(False)
    # train.compile: the student's and the teacher's forwards through torch.compile (hooks still fire);
    # evaluation and export keep the plain modules
    net, teacher_fwd = compiled(net, teacher, cfg.compile)
    return Training(model=model, net=net, teacher=teacher, teacher_forward=teacher_fwd, student_tap=s_tap,
                    teacher_tap=t_tap, objective=objective, optimizer=opt, scheduler=sched, scaler=scaler, train=train,
                    val=val, device=device, dtype=dtype, amp=amp, epochs=spec.epochs, eval_batch=eval_batch)


class StopFlag:
    """SIGINT / SIGTERM (or the caller's cancellation, `cancel`) set a flag the loop checks between steps, so the
    saved state is always consistent.

    A second Ctrl-C interrupts at once.
    """

    CANCELLED = -1  # `signal` when the job's caller cancelled it rather than a signal

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def cancel(self) -> None:
        self.signal = self.CANCELLED

    def error(self, where: str) -> Interrupted:
        """The exit of a run stopped `where` (e.g. "at epoch 2 step 7; state saved to ..."): 130 either way."""
        if self.signal == self.CANCELLED:
            return Cancelled(f"cancelled {where}")
        return Interrupted(f"interrupted {where}")

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. in-process test runners): keep defaults
                pass
        return self

    def _handle(self, signum, _frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
