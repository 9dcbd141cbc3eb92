"""One training loop for both jobs: training a teacher from scratch, and distilling a student from a teacher.

The step reads like the algorithm: the student runs with hooks that keep its stage outputs, the teacher runs
frozen (eval mode, no grad) with the same hooks, the loss is a dict of named terms, and only their sum is
back-propagated. Host synchronisation (`.item()`) happens only every `train.log_every` steps.

The full training state is checkpointed atomically at the end of every epoch (and every
`train.checkpoint_every` steps), so `--resume` continues a killed run; data order and augmentation come from
the seed and the epoch alone, so a resumed CPU run ends with the same numbers as an uninterrupted one.
A non-finite loss or weight stops the run (`Diverged`) before anything non-finite is saved.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from . import checkpoint as ckpt_io
from . import distributed
from .datasets import Batches, DataBundle, Normalize, make_batches
from .device import amp_choice, autocast, channels_last_safe, memory_format
from .errors import EXIT_USAGE, CompressorError, Interrupted, UserError
from .extra_terms import ExtraTerms, at_beta_scale
from .fastpath import fold_batchnorm
from .features import FeatureTap
from .fileio import append_jsonl, write_jsonl
from .losses import DistillLoss, full
from .progress import TrainProgress, console
from .recipe import Recipe

STATE_FORMAT = "compressor.train_state/1"


class Diverged(CompressorError):
    """A non-finite loss. Exit 2, not 1: 1 promises a finished run with every artifact written, and the fix
    is in the input (train.lr, the loss weights), as for any other bad recipe."""

    exit_code = EXIT_USAGE


@dataclass
class FitResult:
    model: nn.Module  # the best-by-validation weights, loaded
    best_epoch: int
    best_val_accuracy: float | None
    history: list[dict]
    train_seconds: float
    images_per_second: float
    resumed_from: int | None = None  # 1-based epoch --resume went on from (the last one if training had finished)
    first_step_at: float | None = None  # time.perf_counter() when the first training step began (None: no step ran)
    amp: dict = field(default_factory=dict)  # the training steps' precision: setting, dtype, reason
    extra: dict = field(default_factory=dict)


def lr_factor(cfg, epochs: int, steps_per_epoch: int):
    """The learning-rate multiplier after `step` optimiser steps, for a scheduler stepped every iteration.

    Per-iteration (not per-epoch) scheduling matters for short budgets: with a per-epoch cosine the whole last
    epoch runs at a high rate, and BatchNorm's running statistics lag the fast-moving weights (measured here:
    54% eval-mode vs 73% batch-statistics accuracy after 2 epochs); annealing within the epoch removes the gap.
    Multistep milestones stay in epochs, as in the paper.
    """
    total = max(1, epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        if cfg.schedule == "multistep":
            return cfg.gamma ** sum(step >= m * steps_per_epoch for m in cfg.milestones)
        return 1.0

    return factor


def build_optimizer(
    model: nn.Module, cfg, epochs: int, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, epochs, steps_per_epoch))


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, device: torch.device, dtype=None, predictions: bool = False) -> dict:
    """Top-1 accuracy (%) and mean cross-entropy of a model on a split, in eval mode; with `predictions`, also
    every image's top-1 class (a CPU tensor, in the split's order).

    Without `dtype` (the final numbers, compared with onnxruntime's fp32 ones) CUDA convolutions run in full
    fp32: cuDNN's default TF32 would round their inputs to 10-bit mantissas and flip near-tied images.
    """
    tf32 = torch.backends.cudnn.allow_tf32
    if dtype is None and device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
    try:
        return _evaluate(model, batches, device, dtype, predictions)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def _evaluate(model: nn.Module, batches: Batches, device: torch.device, dtype, predictions: bool) -> dict:
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=device, dtype=torch.long)
    loss_sum = torch.zeros((), device=device)
    n, predicted = 0, []
    for x, y in batches:
        with autocast(device, dtype):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        top1 = logits.argmax(1)
        correct += (top1 == y).sum()
        if predictions:
            predicted.append(top1)
        n += len(y)
    model.train(was_training)
    out = {"accuracy": 100.0 * correct.item() / max(n, 1), "loss": loss_sum.item() / max(n, 1), "images": n}
    if predictions:
        out["predictions"] = torch.cat(predicted).cpu() if predicted else torch.zeros(0, dtype=torch.long)
    return out


class _StopFlag:
    """SIGINT / SIGTERM set a flag the loop checks between steps, so the saved state is always consistent.

    A second Ctrl-C interrupts at once.
    """

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

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


def _state_matches(state, fingerprint: dict, role: str) -> list[str]:
    problems = []
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        problems.append("not a compressor training state")
    elif state.get("role") != role:
        problems.append(f"it belongs to a `{state.get('role')}` run, not `{role}`")
    else:
        old = state.get("fingerprint", {})
        for key in sorted(set(old) | set(fingerprint)):
            if old.get(key) != fingerprint.get(key):
                problems.append(f"{key} changed since it was written ({old.get(key)} -> {fingerprint.get(key)}); "
                                "start again with --force")
    return problems


def _fingerprint(recipe: Recipe, role: str, teacher: nn.Module | None) -> dict:
    """What must not change between an interrupted run and its resumption (epochs may grow): anything that
    changes the data order, the model, the loss or the optimiser would make the resumed run another run."""
    r = recipe.model_dump(mode="json")
    t = r["train"]
    return {
        "seed": r["seed"],
        "data": {k: v for k, v in r["data"].items() if k != "root"},
        "optimizer": {k: t[k] for k in ("batch_size", "lr", "momentum", "nesterov", "weight_decay", "schedule",
                                        "milestones", "gamma")},
        "model": r["teacher"]["arch"] if role == "teacher" else r["student"],
        "distill": r["distill"] if teacher is not None else None,
        "teacher weights": _digest(teacher) if teacher is not None else None,
    }


def _digest(model: nn.Module) -> str:
    """A short hash of a model's weights: a resumed distillation must learn from the same teacher."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class _Running:
    """An epoch's loss terms summed over its images, kept on the device as one stacked tensor: a stack and an add
    per step for all terms, where summing term by term took two small kernels per term.
    `base`: the sums of an interrupted epoch's earlier steps, restored by --resume; the running sum starts from
    them, so a resumed epoch adds exactly what the uninterrupted one did."""

    def __init__(self, base: dict[str, torch.Tensor] | None = None):
        self.base = dict(base or {})
        self.names: list[str] | None = None
        self.acc: torch.Tensor | None = None

    def add(self, terms: dict[str, torch.Tensor], n: int) -> tuple[list[str], torch.Tensor]:
        """Adds n × each term; returns (names, the step's values stacked)."""
        values = torch.stack([full(terms[k].detach()) for k in (self.names or terms)])
        if self.names is None:
            self.names = list(terms)  # the same keys, in the same order, every step
            start = [torch.as_tensor(self.base.get(k, 0.0), dtype=values.dtype, device=values.device)
                     for k in self.names]
            self.acc = torch.stack(start)
        self.acc.add_(values, alpha=n)
        return self.names, values

    def sums(self) -> dict[str, torch.Tensor]:
        if self.acc is None:
            return dict(self.base)
        return {k: v.clone() for k, v in zip(self.names, self.acc)}


class _Divergence:
    """The first step of an epoch whose loss is not finite, and its loss terms, kept on the device: noticing
    costs no host sync (and a few kernels for all terms together); the loop reads `step` only where it syncs
    anyway."""

    def __init__(self, device: torch.device):
        self.step = torch.full((), -1, device=device, dtype=torch.long)
        self.names: list[str] = []
        self.first: torch.Tensor | None = None  # the terms at the first bad step
        self.latest: torch.Tensor | None = None  # the terms at the latest step

    def see(self, step: int, names: list[str], values: torch.Tensor) -> None:
        """values: the step's terms stacked in the order of `names` (which holds "total")."""
        self.names, self.latest = names, values
        bad = (self.step < 0) & ~torch.isfinite(values[names.index("total")])
        self.step = torch.where(bad, step, self.step)
        self.first = values if self.first is None else torch.where(bad, values, self.first)

    @property
    def terms(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.first)) if self.first is not None else {}

    @property
    def last(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.latest)) if self.latest is not None else {}

    def error(self, epoch: int, step: int, saved: str, *, weights: bool = False) -> Diverged:
        """weights=False: the loss of `step` was not finite; True: its loss was, but its update was not."""
        ordered = sorted((self.last if weights else self.terms).items(), key=lambda kv: kv[0] != "total")
        terms = ", ".join(f"{k}={v.item():.4g}" for k, v in ordered)  # the sum first, then its terms
        what = (f"the weights are no longer finite (the loss was {terms})" if weights
                else f"the loss is not finite ({terms})")
        return Diverged(
            f"training diverged at epoch {epoch + 1} step {step + 1}: {what}; {saved}; "
            "lower train.lr or the loss weights (distill.at.beta) and start again with --force"
        )


def _means(sums: dict[str, torch.Tensor], seen: int) -> dict[str, float]:
    """Each term's mean over the images seen, read with one host sync."""
    if not sums:
        return {}
    values = (torch.stack([full(torch.as_tensor(v)) for v in sums.values()]) / max(seen, 1)).tolist()
    return dict(zip(sums, values))


def _finite(model: nn.Module) -> bool:
    """Whether every weight and statistic is finite (one host sync); checked before any state is saved."""
    values = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(values).all()) if values else True


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


def fit(
    model: nn.Module,
    data: DataBundle,
    recipe: Recipe,
    *,
    device: torch.device,
    state_path: Path,
    metrics_path: Path,
    role: str,
    teacher: nn.Module | None = None,
    pairs: Sequence[tuple[str, str, str]] = (),
    epochs: int | None = None,
    resume: bool = False,
    progress: TrainProgress | None = None,
    checkpoint_extra: Callable[[], dict] | None = None,
) -> FitResult:
    """Train `model` (the student, or a teacher from scratch) and return the best-by-validation weights.

    pairs: (name, teacher module path, student module path) for each attention pair.
    """
    cfg = recipe.train
    epochs = epochs or cfg.epochs
    dtype, amp_reason = amp_choice(cfg.amp, device)
    amp = {"setting": cfg.amp, "dtype": str(dtype).replace("torch.", "") if dtype else "float32", "reason": amp_reason}
    if distributed.is_main():
        console.print(f"training precision: {amp['dtype']} ({amp_reason}); evaluation and export: float32")
    # channels_last where the student's widths are safe for it on this device (device.channels_last_safe)
    fmt = memory_format(cfg.channels_last and (device.type != "cpu" or channels_last_safe(model)))
    normalize = Normalize(data.mean, data.std, device, fmt)
    # in-memory splits move to the device once; a streamed one is decoded batch by batch by DataLoader workers
    stream = {"workers": recipe.data.workers, "device": device}
    train = make_batches(
        data.train.to(device), cfg.batch_size, normalize, train=True, pad=recipe.data.pad, flip=recipe.data.flip,
        seed=recipe.seed, drop_last=len(data.train) >= cfg.batch_size, augment=recipe.data.augment,
        rank=distributed.rank(), world=distributed.world_size(), **stream,  # cfg.batch_size is the global batch
    )
    val = make_batches(data.val.to(device), 512, normalize, **stream) if data.val is not None and len(data.val) else None

    model.to(device=device, memory_format=fmt).train()
    net = distributed.wrap(model, device, cfg.sync_bn)  # DDP around `model` in a multi-process run, else `model`
    extra = ExtraTerms.build(recipe, model, teacher, pairs, data.input_shape, device)  # grad AT, F-ActT; None: off
    opt, sched = build_optimizer(extra.with_adapters(model) if extra else model, cfg, epochs, len(train))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    at = recipe.distill.at
    kd = recipe.distill.kd
    use_at = teacher is not None and at.enabled and at.beta > 0 and len(pairs) > 0
    loss_fn = DistillLoss(
        [p[0] for p in pairs] if use_at else [], beta=at.beta, p=at.p, mapping=at.mapping,
        kd=teacher is not None and kd.enabled, alpha=kd.alpha, temperature=kd.temperature,
    )
    fingerprint = _fingerprint(recipe, role, teacher)  # of the teacher as given, before folding
    if teacher is not None:
        # frozen in eval mode, its BN layers are fixed affine maps: folded into the convs they follow, one pass
        # over each activation disappears (+1-3% on the CPU step at 2 threads, +5-9% at 1 thread on a loaded
        # machine: docs/BENCHMARKS.md); on a copy, so the caller's teacher is not changed; a conv whose own
        # output is an attention point keeps its BN
        teacher = fold_batchnorm(teacher, keep=[p[1] for p in pairs])
    use_taps = use_at or bool(extra and extra.uses_features)
    # the shape lets each tap find points whose output a later in-place op changes, and copy those
    s_tap = FeatureTap(model, [p[2] for p in pairs], data.input_shape) if use_taps else None
    t_tap = FeatureTap(teacher, [p[1] for p in pairs], data.input_shape) if use_taps else None
    if teacher is not None:
        teacher.to(device=device, memory_format=fmt).eval()
        for p_ in teacher.parameters():
            p_.requires_grad_(False)
    teacher_grad = bool(extra and extra.needs_input_grad)  # grad AT: J_T = dCE/dx through this step's teacher forward
    needs_teacher_forward = teacher is not None and (use_taps or loss_fn.kd or teacher_grad)
    # train.compile: the student's and the teacher's forwards through torch.compile (hooks still fire);
    # evaluation and export keep the plain modules
    net, teacher_fwd = compiled(net, teacher, cfg.compile)

    start_epoch, start_step, history = 0, 0, []
    best = {"accuracy": -1.0, "epoch": 0, "state": None}
    resumed_from, partial = None, None
    if resume and state_path.exists():
        state = ckpt_io.load_trusted_dict(state_path)
        problems = _state_matches(state, fingerprint, role)
        if problems:
            raise UserError(*(f"{state_path}: cannot resume: {p}" for p in problems))
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            if extra:
                extra.load_state_dict(state["extra"])
        except (KeyError, RuntimeError, ValueError) as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{state_path}: cannot resume: the saved state does not fit this run ({why})") from None
        start_epoch, start_step, history = state["epoch"], state["step"], list(state["history"])
        best = {"accuracy": state["best_accuracy"], "epoch": state["best_epoch"], "state": state["best_state"]}
        partial = state.get("partial")  # the interrupted epoch's metric sums so far, if it stopped mid-epoch
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        resumed_from = start_epoch + 1 if start_epoch < epochs else epochs  # a finished training: its last epoch
        if start_epoch < epochs:
            console.print(f"resuming from epoch {start_epoch + 1} step {start_step} of {state_path}")
        else:
            console.print(f"{state_path}: training already finished ({start_epoch} epochs); going on from there")
    elif resume:
        console.print(f"--resume: no training state at {state_path}; starting from the beginning")
    if distributed.is_main():  # the log holds exactly the finished epochs (a kill may have left one more line)
        write_jsonl(metrics_path, history)
    saved = "no training state was saved before it"  # what the divergence message says is kept

    def save_state(epoch: int, step: int, so_far: dict | None = None) -> None:
        """`so_far`: the metric sums of a part-done epoch, so a resumed epoch reports the whole epoch."""
        nonlocal saved
        if so_far is not None:  # every rank takes part in the sum; rank 0 keeps it
            sums_, correct_, seen_ = distributed.sum_over_ranks(so_far["sums"], so_far["correct"], so_far["seen"])
            so_far = {**so_far, "sums": sums_, "correct": correct_, "seen": seen_}
        if not distributed.is_main():  # every rank holds the same state; one writes it
            return
        ckpt_io.save(
            {
                "format": STATE_FORMAT,
                "role": role,
                "fingerprint": fingerprint,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "step": step,
                "partial": so_far,
                "history": history,
                "best_accuracy": best["accuracy"],
                "best_epoch": best["epoch"],
                "best_state": best["state"],
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "extra": extra.state_dict() if extra else {},  # the F-ActT adapters
                **(checkpoint_extra() if checkpoint_extra else {}),
            },
            state_path,
        )
        where = f"epoch {epoch + 1} step {step}" if step else f"the end of epoch {epoch}"
        saved = f"the last good state ({where}) is kept in {state_path}"

    train_seconds = sum(h.get("train_seconds", 0.0) for h in history)
    first_step_at = None
    train_images = sum(h.get("train_images", 0) for h in history)
    steps_per_epoch = len(train)
    with _StopFlag() as stop:
        for epoch in range(start_epoch, epochs):
            first_step = start_step if epoch == start_epoch else 0
            at_scale = at_beta_scale(recipe, epoch, epochs)
            base: dict[str, torch.Tensor] = {}
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen, earlier_seconds = 0, 0.0
            if epoch == start_epoch and partial and distributed.is_main():  # the sums of the steps before the kill
                base = {k: v.to(device) for k, v in partial["sums"].items()}
                correct, seen, earlier_seconds = partial["correct"].to(device), partial["seen"], partial["seconds"]
            running, divergence = _Running(base), _Divergence(device)
            t0 = time.perf_counter()
            if progress:
                progress.start_epoch(epoch + 1, epochs, steps_per_epoch, first_step)
            for step, (x, y) in enumerate(train.iterate(epoch, first_step), start=first_step):
                if first_step_at is None:  # the first batch is in: how long the data took to get going
                    first_step_at = time.perf_counter()
                if extra:
                    x.requires_grad_(extra.needs_input_grad)  # grad AT differentiates the loss w.r.t. x
                with autocast(device, dtype):
                    logits = net(x)
                    s_feats = s_tap.take() if s_tap else []
                    t_logits, t_feats, t_graph = None, [], None
                    if needs_teacher_forward:
                        with torch.set_grad_enabled(teacher_grad):  # no graph, unless grad AT needs dJ_T/dx
                            t_logits = teacher_fwd(x)
                            t_feats = t_tap.take() if t_tap else []
                        if teacher_grad:  # the graph serves J_T only; KD and AT take the outputs as targets
                            t_graph, t_logits, t_feats = t_logits, t_logits.detach(), [f.detach() for f in t_feats]
                terms = loss_fn(logits, y, t_logits, s_feats, t_feats, at_scale)
                if extra:
                    with autocast(device, dtype):
                        terms = extra(terms, model, teacher, x, y, logits, s_feats, t_feats, t_graph)
                del t_graph
                del s_feats, t_feats  # the stage outputs are large; free them before backward allocates
                opt.zero_grad(set_to_none=True)
                scaler.scale(terms["total"]).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()  # per iteration: see lr_factor

                # bookkeeping stays on the device: no host sync per step
                n = len(y)
                divergence.see(step, *running.add(terms, n))
                correct += (logits.detach().argmax(1) == y).sum()
                seen += n

                last = step + 1 == steps_per_epoch
                checkpoint = bool(cfg.checkpoint_every) and (step + 1) % cfg.checkpoint_every == 0 and not last
                # several processes decide together, at the log points, so every rank takes the same branch
                stopping = stop.signal is not None and not distributed.active()
                if (step + 1) % cfg.log_every == 0 or last or stopping or checkpoint:  # never save a diverged state
                    bad, stopping = distributed.agree(divergence.step, stop.signal is not None)
                    if bad >= 0:
                        raise divergence.error(epoch, bad, saved)
                    if progress:
                        rate = seen / (earlier_seconds + time.perf_counter() - t0)
                        progress.update(step + 1, _means(running.sums(), seen), 100.0 * correct.item() / seen, rate)
                if checkpoint or (stopping and not last):
                    if not _finite(model):
                        raise divergence.error(epoch, step, saved, weights=True)
                    so_far = {"sums": running.sums(), "correct": correct, "seen": seen,
                              "seconds": earlier_seconds + time.perf_counter() - t0}
                    save_state(epoch, step + 1, so_far)
                if stopping and not last:
                    distributed.barrier()  # the other ranks leave only once rank 0 has saved
                    raise Interrupted(
                        f"interrupted at epoch {epoch + 1} step {step + 1}; state saved to {state_path}; "
                        "run the same command with --resume to continue"
                    )
            epoch_seconds = earlier_seconds + time.perf_counter() - t0
            if not _finite(model):  # before validating, and before the end-of-epoch save
                raise divergence.error(epoch, steps_per_epoch - 1, saved, weights=True)
            # the global batches' numbers (summed over the processes of a multi-process run)
            sums, correct, seen = distributed.sum_over_ranks(running.sums(), correct, seen)
            row = {
                "epoch": epoch + 1,
                "lr": opt.param_groups[0]["lr"],
                "train_loss": _means(sums, seen),
                "train_accuracy": 100.0 * correct.item() / max(seen, 1),
                "train_seconds": epoch_seconds,
                "train_images": seen,
                "images_per_second": seen / epoch_seconds if epoch_seconds > 0 else 0.0,
            }
            if val is not None:
                v = evaluate(model, val, device)  # fp32 whatever the steps ran in: it picks the best epoch
                row.update(val_accuracy=v["accuracy"], val_loss=v["loss"])
            score = row.get("val_accuracy", float(epoch))  # without a validation split: the last epoch
            if score >= best["accuracy"]:
                best = {
                    "accuracy": score,
                    "epoch": epoch + 1,
                    "state": {k: t.detach().clone() for k, t in model.state_dict().items()},
                }
            history.append(row)
            train_seconds += epoch_seconds
            train_images += seen
            if distributed.is_main():
                append_jsonl(metrics_path, row)
            save_state(epoch + 1, 0)
            if progress:
                progress.end_epoch(row)
            if distributed.any_rank(stop.signal is not None, device):  # also waits for rank 0's save
                raise Interrupted(
                    f"interrupted after epoch {epoch + 1}; state saved to {state_path}; "
                    "run the same command with --resume to continue"
                )

    for tap in (s_tap, t_tap):
        if tap:
            tap.remove()
    distributed.unwrap(model)  # SyncBatchNorm (train.sync_bn) back to BatchNorm2d for export
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return FitResult(
        model=model,
        best_epoch=best["epoch"],
        best_val_accuracy=best["accuracy"] if val is not None else None,
        history=history,
        train_seconds=train_seconds,
        images_per_second=train_images / train_seconds if train_seconds > 0 else 0.0,
        resumed_from=resumed_from,
        first_step_at=first_step_at,
        amp=amp,
    )
