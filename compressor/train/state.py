"""The resumable training state: what `train_state.pt` holds, what must not change before `--resume`, and the
best-by-validation weights.

The state is written atomically at the end of every epoch (and every `train.checkpoint_every` steps), never
after a non-finite step; data order and augmentation come from the seed and the epoch alone, so a resumed CPU
run ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.core import distributed
from compressor.core.errors import UserError, first_line
from compressor.core.progress import console
from compressor.models import checkpoint as ckpt_io

STATE_FORMAT = "compressor.train_state/1"


@dataclass(frozen=True)
class StatePaths:
    """Where a run keeps its training state and its metrics log (jobs.paths' RunPaths and CheckpointPaths have
    the same two attributes)."""

    state: Path
    metrics: Path


def digest(model: nn.Module) -> str:
    """A short hash of a model's weights: a resumed distillation must learn from the same teacher."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint(recipe, role: str, teacher: nn.Module | None) -> dict:
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
        "teacher weights": digest(teacher) if teacher is not None else None,
    }


def _mismatches(state, expected: dict, role: str) -> list[str]:
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return ["not a compressor training state"]
    if state.get("role") != role:
        return [f"it belongs to a `{state.get('role')}` run, not `{role}`"]
    old = state.get("fingerprint", {})
    return [f"{key} changed since it was written ({old.get(key)} -> {expected.get(key)}); start again with --force"
            for key in sorted(set(old) | set(expected)) if old.get(key) != expected.get(key)]


@dataclass
class Progress:
    """Where training stands: the next epoch and step, the finished epochs' rows, the best epoch so far."""

    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    best_accuracy: float = -1.0
    best_epoch: int = 0
    best_state: dict | None = None
    partial: dict | None = None  # the interrupted epoch's metric sums so far, if it stopped mid-epoch
    resumed_from: int | None = None  # 1-based epoch --resume went on from (the last one if training had finished)

    def keep_if_best(self, score: float, epoch: int, model: nn.Module) -> None:
        if score >= self.best_accuracy:
            self.best_accuracy, self.best_epoch = score, epoch
            self.best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}


class StateFile:
    """Saves and restores one run's training state at `path`; `saved` is what a divergence message says is
    kept."""

    def __init__(self, path: Path, role: str, fingerprint: dict, parts: dict[str, Any],
                 extra: Callable[[], dict] | None = None):
        self.path, self.role, self.fingerprint = path, role, fingerprint
        self.parts = parts  # name -> object with state_dict()/load_state_dict(): model, optimizer, scheduler, ...
        self.extra = extra  # more entries for the state (the pruned student's plan)
        self.saved = "no training state was saved before it"

    def save(self, progress: Progress, epoch: int, step: int, device: torch.device, so_far: dict | None = None) -> None:
        """`so_far`: the metric sums of a part-done epoch, so a resumed epoch reports the whole epoch."""
        if so_far is not None:  # every rank takes part in the sum; rank 0 keeps it
            sums, correct, seen = distributed.sum_over_ranks(so_far["sums"], so_far["correct"], so_far["seen"])
            so_far = {**so_far, "sums": sums, "correct": correct, "seen": seen}
        if not distributed.is_main():  # every rank holds the same state; one writes it
            return
        ckpt_io.save(
            {
                "format": STATE_FORMAT,
                "role": self.role,
                "fingerprint": self.fingerprint,
                **{name: part.state_dict() for name, part in self.parts.items()},
                "epoch": epoch,
                "step": step,
                "partial": so_far,
                "history": progress.history,
                "best_accuracy": progress.best_accuracy,
                "best_epoch": progress.best_epoch,
                "best_state": progress.best_state,
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                **(self.extra() if self.extra else {}),
            },
            self.path,
        )
        where = f"epoch {epoch + 1} step {step}" if step else f"the end of epoch {epoch}"
        self.saved = f"the last good state ({where}) is kept in {self.path}"

    def restore(self, epochs: int, device: torch.device) -> Progress:
        """The saved progress, with every part loaded and the RNG state restored."""
        state = ckpt_io.load_trusted_dict(self.path)
        problems = _mismatches(state, self.fingerprint, self.role)
        if problems:
            raise UserError(*(f"{self.path}: cannot resume: {p}" for p in problems))
        try:
            for name, part in self.parts.items():
                part.load_state_dict(state[name])
        except (KeyError, RuntimeError, ValueError) as e:
            raise UserError(f"{self.path}: cannot resume: the saved state does not fit this run "
                            f"({first_line(e)})") from None
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        epoch = state["epoch"]
        if epoch < epochs:
            console.print(f"resuming from epoch {epoch + 1} step {state['step']} of {self.path}")
        else:
            console.print(f"{self.path}: training already finished ({epoch} epochs); going on from there")
        return Progress(epoch, state["step"], list(state["history"]), state["best_accuracy"], state["best_epoch"],
                        state["best_state"], state.get("partial"),
                        resumed_from=epoch + 1 if epoch < epochs else epochs)  # a finished training: its last epoch
