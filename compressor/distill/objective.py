"""The distillation objective: the recipe's enabled terms, built once, summed once.

    total = Σ_term weight_term(epoch) · term(step)

`TERMS` is the registry: a recipe section's name -> the function that builds its terms from a `TermContext`
(none when the section is off). The order of the registry is the order of the terms in every step's dict and in
metrics.jsonl: kd, ce, at.<pair>..., feat.<pair>..., grad_at, grad_at.flip, then total. A new term (CRD, DKD, ...)
is one new module with a term class and a `build(ctx)`, and one line here (and its recipe section).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from compressor.core.errors import UserError
from compressor.distill import at, feature, grad_at, kd
from compressor.distill.pairs import Pair
from compressor.distill.terms import Step, Term

TERMS: dict[str, Callable[["TermContext"], list[Term]]] = {
    "kd": kd.build,  # kd and ce (ce alone without a teacher or without KD)
    "at": at.build,
    "feature": feature.build,
    "grad_at": grad_at.build,
}
# whether each section's terms train correctly on several processes (DDP), as its module says: F-ActT's adapters are
# trained outside the student and gradient AT differentiates twice, and neither has been made data-parallel yet
DATA_PARALLEL = {"kd": kd.DATA_PARALLEL, "at": at.DATA_PARALLEL, "feature": feature.DATA_PARALLEL,
                 "grad_at": grad_at.DATA_PARALLEL}


def check_data_parallel(distill, world: int) -> None:
    """Refuse, on several processes, a section whose terms are not data-parallel (before any data is loaded)."""
    unsupported = [m for m in distill.methods() if not DATA_PARALLEL[m]] if world > 1 else []
    if unsupported:
        raise UserError(*(f"distill.{m}: not supported with several processes yet; run it in one" for m in unsupported))


@dataclass
class TermContext:
    """What the term builders read. A builder whose terms have trainable parts (F-ActT's adapters) puts them
    in `trainable`."""

    distill: object  # the recipe's distill section (recipe.schema.DistillConfig)
    milestones: Sequence[int]  # train.milestones: a step-decayed term weight's default milestones
    student: nn.Module
    teacher: nn.Module | None  # None: a model trained from scratch (cross-entropy only)
    pairs: Sequence[Pair]
    device: torch.device
    trainable: nn.Module | None = None

    def on(self, method: str) -> bool:
        """Whether the recipe turns `method` on (DistillConfig.methods: enabled, weight > 0) and there is a teacher."""
        return self.teacher is not None and method in self.distill.methods()


class Objective:
    """Called once per step with the step's tensors; returns the named weighted terms and their `total`, last."""

    def __init__(self, terms: Sequence[Term], trainable: nn.Module | None = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.terms = list(terms)
        self.trainable = trainable  # parameters trained with the student that are not the student's
        self.autocast = autocast  # the step's precision, for the terms that run a network forward
        self.names = [t.name for t in self.terms]
        # what the step must provide, from the terms' flags (fixed once built, read every step):
        # x requires grad and the teacher's forward keeps its graph (gradient AT);
        self.needs_input_grad = any(t.needs_input_grad for t in self.terms)
        # the attention points' outputs, through the training taps (AT, F-ActT);
        self.uses_features = any(t.needs_features for t in self.terms)
        # a teacher forward at all (without one, the student alone, the teacher never runs)
        self.needs_teacher = any(t.needs_teacher for t in self.terms)

    @classmethod
    def build(cls, distill, milestones: Sequence[int], student: nn.Module, teacher: nn.Module | None,
              pairs: Sequence[Pair], device: torch.device, autocast=contextlib.nullcontext) -> "Objective":
        """From the recipe's distill section (and train.milestones, for step-decayed weights)."""
        ctx = TermContext(distill, list(milestones), student, teacher, list(pairs), device)
        terms = [term for build in TERMS.values() for term in build(ctx)]
        return cls(terms, ctx.trainable, autocast)

    def optimized(self, student: nn.Module) -> nn.Module:
        """What the optimizer trains: the student, then the trainable parts (the student's parameter order
        is unchanged)."""
        return nn.ModuleList([student, self.trainable]) if self.trainable is not None else student

    def state_dict(self) -> dict:
        return self.trainable.state_dict() if self.trainable is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.trainable is not None:
            self.trainable.load_state_dict(state)

    def __call__(self, step: Step) -> dict[str, torch.Tensor]:
        terms = {}
        for term in self.terms:
            with self.autocast() if term.autocast else contextlib.nullcontext():
                terms[term.name] = term(step) * term.weight.at(step.epoch, step.epochs)
        terms["total"] = sum(terms.values())
        return terms
