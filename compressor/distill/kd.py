"""The class terms: Hinton knowledge distillation and cross-entropy.

    kd = alpha · T² · KL(softmax(t/T) || softmax(s/T))     (batchmean; T² keeps gradient magnitudes T-independent)
    ce = (1 − alpha) · CE(s, y)                             1 · CE(s, y) without KD (or without a teacher)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.nn import functional as F

from compressor.distill.terms import Reads, Step, Weight, full


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float = 4.0) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch."""
    t = temperature
    log_p = F.log_softmax(full(student_logits) / t, dim=1)
    q = F.softmax(full(teacher_logits) / t, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * (t * t)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """Hinton KD: KL(batchmean)·T²·alpha + cross-entropy·(1 − alpha)."""
    kd = soft_target_loss(student_logits, teacher_logits, temperature) * alpha
    return kd + F.cross_entropy(full(student_logits), labels) * (1.0 - alpha)


@dataclass
class SoftTargets(Reads):
    """`kd`: the soft-target term, weighted by alpha."""

    weight: Weight
    temperature: float = 4.0
    name: ClassVar[str] = "kd"
    needs_teacher: ClassVar[bool] = True

    def __call__(self, step: Step) -> torch.Tensor:
        return soft_target_loss(step.logits, step.teacher_logits, self.temperature)


@dataclass
class CrossEntropy(Reads):
    """`ce`: cross-entropy against the labels."""

    weight: Weight
    name: ClassVar[str] = "ce"

    def __call__(self, step: Step) -> torch.Tensor:
        return F.cross_entropy(full(step.logits), step.labels)


DATA_PARALLEL = True


def build(ctx) -> list:
    """kd and ce under `distill.kd` with a teacher; ce alone otherwise (a teacher trained from scratch)."""
    kd = ctx.distill.kd
    if not ctx.on("kd"):
        return [CrossEntropy(Weight(1.0))]
    return [SoftTargets(Weight(kd.alpha), kd.temperature), CrossEntropy(Weight(1.0 - kd.alpha))]
