"""The training step's terms beyond cross-entropy, KD and AT: gradient-based AT and F-ActT, and beta's schedule.

`trainer.fit` makes one `ExtraTerms` (None when both methods are off) and calls it once per step; it returns
the step's named loss terms with `grad_at`, `grad_at.flip` and `feat.<pair>` added and `total` recomputed, so
metrics.jsonl shows each part. The F-ActT adapters live here, not in the student: `fit` gives their parameters
to the optimizer and their weights to the resume state, and the exported student never sees them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .feature_transfer import FeatureAdapters
from .grad_at import grad_at_terms
from .recipe import Recipe


def beta_scale(schedule: str, epoch: int, epochs: int, milestones: Sequence[int] = (), gamma: float = 0.1) -> float:
    """The factor on the AT beta during 0-based `epoch` of `epochs`, with the learning-rate schedules' conventions:

    constant: 1.  step: gamma ** (number of milestones <= epoch), as MultiStepLR.  cosine: (1 + cos(pi·epoch/epochs)) / 2,
    as CosineAnnealingLR. The paper decays beta when AT is combined with KD without saying how; these are the usual
    choices.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return gamma ** sum(epoch >= m for m in milestones)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    raise ValueError(f"unknown beta schedule {schedule!r}")


def at_beta_scale(recipe: Recipe, epoch: int, epochs: int) -> float:
    at = recipe.distill.at
    return beta_scale(at.beta_schedule, epoch, epochs, at.beta_milestones or recipe.train.milestones, at.beta_gamma)


@dataclass
class ExtraTerms:
    pair_names: list[str]
    grad_beta: float  # 0 = gradient-based AT off
    grad_flip: bool
    feature_beta: float  # 0 = F-ActT off
    adapters: FeatureAdapters | None

    @classmethod
    def build(
        cls, recipe: Recipe, student: nn.Module, teacher: nn.Module | None, pairs: Sequence[tuple[str, str, str]],
        input_shape, device: torch.device,
    ) -> "ExtraTerms | None":
        """From the recipe's `distill.grad_at` and `distill.feature`; None without a teacher or with both off."""
        g, f = recipe.distill.grad_at, recipe.distill.feature
        grad_beta = g.beta if teacher is not None and g.enabled else 0.0
        feature_beta = f.beta if teacher is not None and f.enabled and pairs else 0.0
        if not grad_beta and not feature_beta:
            return None
        adapters = FeatureAdapters.for_pairs(student, teacher, pairs, input_shape).to(device) if feature_beta else None
        return cls([p[0] for p in pairs], grad_beta, g.flip, feature_beta, adapters)

    @property
    def needs_input_grad(self) -> bool:
        return self.grad_beta > 0

    @property
    def uses_features(self) -> bool:
        return self.feature_beta > 0

    def with_adapters(self, student: nn.Module) -> nn.Module:
        """What the optimizer trains: the student, then the adapters (the student's parameter order is unchanged)."""
        return nn.ModuleList([student, self.adapters]) if self.adapters is not None else student

    def state_dict(self) -> dict:
        return self.adapters.state_dict() if self.adapters is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.adapters is not None:
            self.adapters.load_state_dict(state)

    def __call__(
        self,
        terms: dict[str, torch.Tensor],
        student: nn.Module,
        teacher: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor,
        student_features: Sequence[torch.Tensor],
        teacher_features: Sequence[torch.Tensor],
        teacher_logits: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """`terms` (from DistillLoss) plus this step's extra terms, with `total` recomputed and kept last.

        teacher_logits: the step's teacher forward on `x` with its graph (grad AT takes J_T from it); None runs
        the teacher again. An extra forward (the student's on flip(x), or that teacher's) also fires the trainer's
        feature hooks; their outputs are overwritten by the next step's forward before anyone reads them.
        """
        extra: dict[str, torch.Tensor] = {}
        if self.adapters is not None:
            extra.update(self.adapters.terms(self.pair_names, student_features, teacher_features, self.feature_beta))
        if self.grad_beta:
            extra.update(grad_at_terms(student, teacher, x, labels, logits, beta=self.grad_beta, flip=self.grad_flip,
                                       teacher_logits=teacher_logits))
        out = {k: v for k, v in terms.items() if k != "total"}
        out.update(extra)
        out["total"] = sum(out.values())
        return out
