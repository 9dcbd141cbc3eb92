"""One training loop for both jobs: training a teacher from scratch, and distilling a student from a teacher.

The step reads like the algorithm: the student runs with hooks that keep its stage outputs, the teacher runs
frozen (eval mode, no grad) with the same hooks, the loss is a dict of named terms, and only their sum is
back-propagated. Host synchronisation (`.item()`) happens only every `train.log_every` steps.

The full training state is checkpointed atomically at the end of every epoch (and every
`train.checkpoint_every` steps), so `--resume` continues a killed run; data order and augmentation come from
the seed and the epoch alone, so a resumed CPU run ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from . import checkpoint as ckpt_io
from .datasets import Batches, DataBundle, Normalize
from .device import amp_dtype, autocast
from .errors import CompressorError, UserError
from .features import FeatureTap
from .fileio import append_jsonl
from .losses import DistillLoss
from .progress import TrainProgress
from .recipe import Recipe

STATE_FORMAT = "compressor.train_state/1"


class Interrupted(CompressorError):
    exit_code = 130


class Diverged(CompressorError):
    exit_code = 1


@dataclass
class FitResult:
    model: nn.Module  # the best-by-validation weights, loaded
    best_epoch: int
    best_val_accuracy: float | None
    history: list[dict]
    train_seconds: float
    images_per_second: float
    resumed_from: int | None = None
    extra: dict = field(default_factory=dict)


def build_optimizer(model: nn.Module, cfg, epochs: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )
    if cfg.schedule == "multistep":
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.milestones, gamma=cfg.gamma)
    elif cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _e: 1.0)
    return opt, sched


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, device: torch.device, dtype=None) -> dict:
    """Top-1 accuracy (%) and mean cross-entropy of a model on a split, in eval mode."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=device, dtype=torch.long)
    loss_sum = torch.zeros((), device=device)
    n = 0
    for x, y in batches:
        with autocast(device, dtype):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        n += len(y)
    model.train(was_training)
    return {"accuracy": 100.0 * correct.item() / max(n, 1), "loss": loss_sum.item() / max(n, 1), "images": n}


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


def _state_matches(state: dict, recipe: Recipe, role: str) -> list[str]:
    problems = []
    if state.get("format") != STATE_FORMAT:
        problems.append("not a compressor training state")
    elif state.get("role") != role:
        problems.append(f"it belongs to a `{state.get('role')}` run, not `{role}`")
    else:
        old = state.get("fingerprint", {})
        new = _fingerprint(recipe)
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                problems.append(f"recipe {key} changed since it was written ({old.get(key)} -> {new.get(key)})")
    return problems


def _fingerprint(recipe: Recipe) -> dict:
    """What must not change between an interrupted run and its resumption (epochs may grow)."""
    r = recipe.model_dump(mode="json")
    return {
        "seed": r["seed"],
        "data": {k: v for k, v in r["data"].items() if k != "root"},
        "batch_size": r["train"]["batch_size"],
        "student": r["student"],
        "distill": r["distill"],
    }


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
    dtype = amp_dtype(cfg.amp, device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    normalize = Normalize(data.mean, data.std, device, memory_format)
    train = Batches(
        data.train.to(device), cfg.batch_size, normalize, train=True, pad=recipe.data.pad, flip=recipe.data.flip,
        seed=recipe.seed, drop_last=len(data.train) >= cfg.batch_size,
    )
    val = Batches(data.val.to(device), 512, normalize) if data.val is not None and len(data.val) else None

    model.to(device=device, memory_format=memory_format).train()
    opt, sched = build_optimizer(model, cfg, epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    at = recipe.distill.at
    kd = recipe.distill.kd
    use_at = teacher is not None and at.enabled and at.beta > 0 and len(pairs) > 0
    loss_fn = DistillLoss(
        [p[0] for p in pairs] if use_at else [], beta=at.beta, p=at.p, mapping=at.mapping,
        kd=teacher is not None and kd.enabled, alpha=kd.alpha, temperature=kd.temperature,
    )
    s_tap = FeatureTap(model, [p[2] for p in pairs]) if use_at else None
    t_tap = FeatureTap(teacher, [p[1] for p in pairs]) if use_at else None
    if teacher is not None:
        teacher.to(device=device, memory_format=memory_format).eval()
        for p_ in teacher.parameters():
            p_.requires_grad_(False)
    needs_teacher_forward = teacher is not None and (use_at or loss_fn.kd)

    start_epoch, start_step, history = 0, 0, []
    best = {"accuracy": -1.0, "epoch": 0, "state": None}
    resumed_from = None
    if resume and state_path.exists():
        state = ckpt_io.load_trusted_dict(state_path)
        problems = _state_matches(state, recipe, role)
        if problems:
            raise UserError(*(f"{state_path}: cannot resume: {p}" for p in problems))
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, start_step, history = state["epoch"], state["step"], list(state["history"])
        best = {"accuracy": state["best_accuracy"], "epoch": state["best_epoch"], "state": state["best_state"]}
        torch.set_rng_state(state["rng"])
        resumed_from = start_epoch + 1
    elif resume:
        resumed_from = None  # nothing to resume: start from scratch (said by the caller)

    def save_state(epoch: int, step: int) -> None:
        ckpt_io.save(
            {
                "format": STATE_FORMAT,
                "role": role,
                "fingerprint": _fingerprint(recipe),
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch,
                "step": step,
                "history": history,
                "best_accuracy": best["accuracy"],
                "best_epoch": best["epoch"],
                "best_state": best["state"],
                "rng": torch.get_rng_state(),
                **(checkpoint_extra() if checkpoint_extra else {}),
            },
            state_path,
        )

    train_seconds = sum(h.get("train_seconds", 0.0) for h in history)
    train_images = sum(h.get("train_images", 0) for h in history)
    steps_per_epoch = len(train)
    with _StopFlag() as stop:
        for epoch in range(start_epoch, epochs):
            first_step = start_step if epoch == start_epoch else 0
            sums: dict[str, torch.Tensor] = {}
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            bad_step = torch.full((), -1, device=device, dtype=torch.long)
            t0 = time.perf_counter()
            if progress:
                progress.start_epoch(epoch + 1, epochs, steps_per_epoch, first_step)
            for step, (x, y) in enumerate(train.iterate(epoch, first_step), start=first_step):
                with autocast(device, dtype):
                    logits = model(x)
                    s_feats = s_tap.take() if s_tap else []
                    t_logits, t_feats = None, []
                    if needs_teacher_forward:
                        with torch.no_grad():
                            t_logits = teacher(x)
                            t_feats = t_tap.take() if t_tap else []
                terms = loss_fn(logits, y, t_logits, s_feats, t_feats)
                del s_feats, t_feats  # the stage outputs are large; free them before backward allocates
                opt.zero_grad(set_to_none=True)
                scaler.scale(terms["total"]).backward()
                scaler.step(opt)
                scaler.update()

                # bookkeeping stays on the device: no host sync per step
                n = len(y)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0) + v.detach() * n
                correct += (logits.detach().argmax(1) == y).sum()
                seen += n
                finite = torch.isfinite(terms["total"].detach())
                bad_step = torch.where((bad_step < 0) & ~finite, step, bad_step)

                last = step + 1 == steps_per_epoch
                if (step + 1) % cfg.log_every == 0 or last or stop.signal is not None:
                    if bad_step.item() >= 0:
                        raise Diverged(
                            f"training diverged at epoch {epoch + 1} step {bad_step.item() + 1}: loss terms "
                            + ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
                            + f"; the last good state is in {state_path} (try a lower train.lr)"
                        )
                    if progress:
                        progress.update(step + 1, {k: (v / seen).item() for k, v in sums.items()},
                                        100.0 * correct.item() / seen, seen / (time.perf_counter() - t0))
                if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and not last:
                    save_state(epoch, step + 1)
                if stop.signal is not None and not last:
                    save_state(epoch, step + 1)
                    raise Interrupted(
                        f"interrupted at epoch {epoch + 1} step {step + 1}; state saved to {state_path}; "
                        "run the same command with --resume to continue"
                    )
            epoch_seconds = time.perf_counter() - t0
            sched.step()
            row = {
                "epoch": epoch + 1,
                "lr": opt.param_groups[0]["lr"],
                "train_loss": {k: (v / max(seen, 1)).item() for k, v in sums.items()},
                "train_accuracy": 100.0 * correct.item() / max(seen, 1),
                "train_seconds": epoch_seconds,
                "train_images": seen,
                "images_per_second": seen / epoch_seconds if epoch_seconds > 0 else 0.0,
            }
            if val is not None:
                v = evaluate(model, val, device, dtype)
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
            append_jsonl(metrics_path, row)
            save_state(epoch + 1, 0)
            if progress:
                progress.end_epoch(row)
            if stop.signal is not None:
                raise Interrupted(
                    f"interrupted after epoch {epoch + 1}; state saved to {state_path}; "
                    "run the same command with --resume to continue"
                )

    for tap in (s_tap, t_tap):
        if tap:
            tap.remove()
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
    )
