"""One training loop for both jobs: training a teacher from scratch, and distilling a student from a teacher.

    for each epoch, for each batch: the student's forward (hooks keep its attention points), the frozen
    teacher's (eval mode, no grad), the objective's named terms, backward of their total, an optimiser step;
    then validate, keep the best epoch, checkpoint.

Host synchronisation (`.item()`) happens only at the sync points, every `train.log_every` steps: there the
processes of a multi-process run agree on divergence and on stopping, progress is shown, and mid-epoch
checkpoints (`train.checkpoint_every`) are written. A non-finite loss or weight stops the run (`Diverged`)
before anything non-finite is saved; SIGINT/SIGTERM saves the state and exits (`Interrupted`) for `--resume`.
Set-up: train.setup; the resumable state: train.state; the running sums: train.meters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from compressor.core import distributed
from compressor.core.device import autocast
from compressor.core.fileio import append_jsonl, write_jsonl
from compressor.core.progress import Reporter, console, eta
from compressor.data.splits import DataBundle
from compressor.distill.pairs import Pair
from compressor.distill.terms import Step
from compressor.models.evaluate import evaluate
from compressor.recipe.schema import DataConfig, DistillConfig, Recipe, TrainConfig
from compressor.train.meters import EpochMeter, check_validation, finite, means
from compressor.train.setup import StopFlag, Training, prepare
from compressor.train.state import Progress, StateFile, fingerprint


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
    eval_batch: int = 512  # images a batch that evaluation can take beside the models in memory
    steps: int = 0  # optimizer steps of the whole training (the epochs before a --resume too)


@dataclass(frozen=True)
class FitSpec:
    """What a training run reads of the recipe (its own sections, nothing else) and what `--resume` must find
    unchanged (`identity`, train.state.fingerprint)."""

    train: TrainConfig
    data: DataConfig  # augmentation and workers
    distill: DistillConfig  # the objective's terms (without a teacher: cross-entropy alone)
    seed: int
    role: str  # "distill" | "teacher": whose training state a state file holds
    epochs: int
    identity: dict

    @classmethod
    def of(cls, recipe: Recipe, role: str, teacher: nn.Module | None, epochs: int | None = None) -> "FitSpec":
        """The recipe's sections; the identity of the teacher as given (before set-up folds its BatchNorm)."""
        return cls(recipe.train, recipe.data, recipe.distill, recipe.seed, role, epochs or recipe.train.epochs,
                   fingerprint(recipe, role, teacher))


@dataclass
class _Loop:
    """What the loop keeps between steps: the run, its state file and progress, the stop flag, the reporter."""

    run: Training
    cfg: TrainConfig
    state: StateFile
    done: Progress
    stop: StopFlag
    reporter: Reporter | None


def fit(model: nn.Module, data: DataBundle, spec: FitSpec, paths, *, device: torch.device,
        teacher: nn.Module | None = None, pairs: Sequence[Pair] = (), resume: bool = False,
        reporter: Reporter | None = None, checkpoint_extra: Callable[[], dict] | None = None) -> FitResult:
    """Train `model` (the student, or a teacher from scratch) and return the best-by-validation weights.

    `paths`: where the training state and the metrics go (`.state`, `.metrics`: jobs.paths). `reporter` gets the
    training's progress (epoch, step, img/s, ETA, loss terms, each epoch's metrics row) and is polled between
    steps for cancellation, which stops the run as SIGTERM does (state saved, `Cancelled`)."""
    run = prepare(model, data, spec, device=device, teacher=teacher, pairs=list(pairs))
    state = StateFile(paths.state, spec.role, spec.identity, {"model": model, "optimizer": run.optimizer,
                      "scheduler": run.scheduler, "scaler": run.scaler, "extra": run.objective}, checkpoint_extra)
    done = _start(state, resume, spec.epochs, device)
    if distributed.is_main():  # the log holds exactly the finished epochs (a kill may have left one more line)
        write_jsonl(paths.metrics, done.history)
    first_step_at = None
    with StopFlag() as stop:
        loop = _Loop(run, spec.train, state, done, stop, reporter)
        for epoch in range(done.epoch, spec.epochs):
            first = done.step if epoch == done.epoch else 0
            meter = EpochMeter(device, done.partial if epoch == done.epoch and distributed.is_main() else None,
                               logit_bound=spec.train.max_logit)
            if reporter:
                reporter.emit("training", epoch=epoch + 1, epochs=spec.epochs, step=first, steps=len(run.train))
            for step, (x, y) in enumerate(run.train.iterate(epoch, first), start=first):
                first_step_at = first_step_at or time.perf_counter()  # when the data got going
                terms, logits = train_step(run, x, y, epoch)
                meter.add(step, terms, logits, y)  # on the device: no host sync per step
                if reporter and stop.signal is None and reporter.cancelled():
                    stop.cancel()
                _sync_point(loop, meter, epoch, step, first)
            row = _end_epoch(run, meter, epoch, state)
            done.keep_if_best(row.get("val_accuracy", float(epoch)), epoch + 1, model)  # no val split: the last
            done.history.append(row)
            if distributed.is_main():
                append_jsonl(paths.metrics, row)
            state.save(done, epoch + 1, 0, device)
            if reporter:
                reporter.emit(epoch=epoch + 1, epochs=spec.epochs, step=len(run.train), steps=len(run.train),
                              metrics=row)
            if distributed.any_rank(stop.signal is not None, device):  # also waits for rank 0's save
                raise stop.error(f"after epoch {epoch + 1}; state saved to {paths.state}; "
                                 "run the same command with --resume to continue")
    return _finish(run, done, first_step_at)


def train_step(run: Training, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[dict, torch.Tensor]:
    """One optimiser step on a batch; returns the step's named loss terms and the student's logits."""
    objective = run.objective
    if objective.needs_input_grad:
        x.requires_grad_(True)  # gradient AT differentiates the loss with respect to x
    with autocast(run.device, run.dtype):
        logits = run.net(x)
        step = Step(x, y, logits, student_features=run.student_tap.take() if run.student_tap else [],
                    epoch=epoch, epochs=run.epochs)
        if run.teacher_needed:
            _teacher_forward(run, step)
    terms = objective(step)
    del step  # the attention points' outputs are large; free them before backward allocates
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(terms["total"]).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()  # per iteration: see train.optim.lr_factor
    return terms, logits


def _teacher_forward(run: Training, step: Step) -> None:
    """The teacher's logits and attention points as constant targets; with gradient AT also the logits' graph
    to x (J_T = dCE/dx comes from this forward)."""
    keep_graph = run.objective.needs_input_grad
    with torch.set_grad_enabled(keep_graph):  # no graph, unless grad AT needs dJ_T/dx
        logits = run.teacher_forward(step.x)
        feats = run.teacher_tap.take() if run.teacher_tap else []
    if keep_graph:  # the graph serves J_T only; KD and AT take the outputs as targets
        step.teacher_graph, logits, feats = logits, logits.detach(), [f.detach() for f in feats]
    step.teacher_logits, step.teacher_features = logits, feats


def _start(state: StateFile, resume: bool, epochs: int, device: torch.device) -> Progress:
    if resume and state.path.exists():
        return state.restore(epochs, device)
    if resume:
        console.print(f"--resume: no training state at {state.path}; starting from the beginning")
    return Progress()


def _sync_point(loop: _Loop, meter: EpochMeter, epoch: int, step: int, first: int) -> None:
    """Every train.log_every steps, at the epoch's last step, before a mid-epoch checkpoint and when a signal
    came: the processes agree on divergence and on stopping (so every rank takes the same branch), progress is
    shown, a mid-epoch checkpoint is written, and a stop saves the state and raises Interrupted."""
    run, cfg, stop, state, reporter = loop.run, loop.cfg, loop.stop, loop.state, loop.reporter
    last = step + 1 == len(run.train)
    checkpoint = bool(cfg.checkpoint_every) and (step + 1) % cfg.checkpoint_every == 0 and not last
    stopping = stop.signal is not None and not distributed.active()
    if (step + 1) % cfg.log_every == 0 or last or stopping or checkpoint:  # never save a diverged state
        bad, stopping = distributed.agree(meter.divergence.step, stop.signal is not None)
        if bad >= 0:
            raise meter.divergence.error(epoch, bad, state.saved)
        if reporter:
            seconds = meter.seconds - meter.earlier_seconds  # this process's share of the epoch: steps first..step
            reporter.emit(epoch=epoch + 1, epochs=run.epochs, step=step + 1, steps=len(run.train),
                          losses=meter.means(), accuracy=meter.accuracy(), images_per_second=meter.seen / meter.seconds,
                          eta_seconds=eta(epoch + 1, run.epochs, step + 1, len(run.train), seconds, first))
    if checkpoint or (stopping and not last):
        if not finite(run.model):
            raise meter.divergence.error(epoch, step, state.saved, weights=True)
        state.save(loop.done, epoch, step + 1, run.device, meter.so_far())
    if stopping and not last:
        distributed.barrier()  # the other ranks leave only once rank 0 has saved
        raise stop.error(f"at epoch {epoch + 1} step {step + 1}; state saved to {state.path}; "
                         "run the same command with --resume to continue")


def _end_epoch(run: Training, meter: EpochMeter, epoch: int, state: StateFile) -> dict:
    """The epoch's metrics.jsonl row: its loss terms and accuracy over all processes, and validation."""
    seconds = meter.seconds
    if not finite(run.model):  # before validating, and before the end-of-epoch save
        raise meter.divergence.error(epoch, len(run.train) - 1, state.saved, weights=True)
    # the global batches' numbers (summed over the processes of a multi-process run)
    sums, correct, seen = distributed.sum_over_ranks(meter.running.sums(), meter.correct, meter.seen)
    row = {
        "epoch": epoch + 1,
        "lr": run.optimizer.param_groups[0]["lr"],
        "train_loss": means(sums, seen),
        "train_accuracy": 100.0 * correct.item() / max(seen, 1),
        "train_seconds": seconds,
        "train_images": seen,
        "images_per_second": seen / seconds if seconds > 0 else 0.0,
    }
    if run.val is not None:
        v = evaluate(run.model, run.val, run.device)  # fp32 whatever the steps ran in: it picks the best epoch
        check_validation(v, meter.divergence.bound, epoch, state.saved, steps=(epoch + 1) * len(run.train))
        row.update(val_accuracy=v["accuracy"], val_loss=v["loss"])
    return row


def _finish(run: Training, done: Progress, first_step_at: float | None) -> FitResult:
    """The best epoch's weights in the plain student (hooks removed, SyncBatchNorm undone), eval mode."""
    run.close()
    distributed.unwrap(run.model)  # SyncBatchNorm (train.sync_bn) back to BatchNorm2d for export
    if done.best_state is not None:
        run.model.load_state_dict(done.best_state)
    run.model.eval()
    seconds = sum(h.get("train_seconds", 0.0) for h in done.history)
    images = sum(h.get("train_images", 0) for h in done.history)
    return FitResult(
        model=run.model,
        best_epoch=done.best_epoch,
        best_val_accuracy=done.best_accuracy if run.val is not None else None,
        history=done.history,
        train_seconds=seconds,
        images_per_second=images / seconds if seconds > 0 else 0.0,
        resumed_from=done.resumed_from,
        first_step_at=first_step_at,
        amp=run.amp,
        eval_batch=run.eval_batch,
        steps=len(run.train) * len(done.history),
    )
