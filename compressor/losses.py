"""The distillation losses, exactly as the attention-transfer reference code computes them.

    attention_map(A) = normalize(mean_c |A|^p)        (N, C, H, W) -> (N, H*W)
    at_loss(S, T)    = mean((Q_S - Q_T)^2)             one number per teacher/student pair
    kd_loss          = KL(softmax(t/T) || softmax(s/T)) * T^2 * alpha + CE(s, y) * (1 - alpha)

The training step adds beta * at_loss for every pair (beta = 1000 in the paper: the weight of each pair, as in
the reference code, which uses `beta * sum(pair losses)` on one GPU) to cross-entropy or to KD.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from .fastpath import channel_energy


def full(t: torch.Tensor) -> torch.Tensor:
    """A bf16/fp16 tensor (from an autocast region) in float32; float32 and float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def attention_map(features: torch.Tensor, p: float = 2, mapping: str = "mean") -> torch.Tensor:
    """Spatial attention map: (N, C, H, W) -> (N, H*W), L2-normalised per image.

    `mapping="mean"` averages |A|^p over channels (the paper's F_sum^p up to a constant, which normalisation
    removes); `"max"` takes the channel maximum of |A|^p (the paper's F_max^p). Computed in float32 so a bf16
    autocast region does not coarsen the map.
    """
    a = full(features)
    if p == 2 and mapping == "mean":  # the paper's setting: mean_c A² in one reduction, same values and grads
        q = channel_energy(a)
    else:
        a = a.pow(2) if p == 2 else a.abs().pow(p)  # for p = 2 identical to |A|^2, and what the reference does
        q = a.mean(1) if mapping == "mean" else a.amax(1)
    return F.normalize(q.flatten(1), dim=1)


def _match_size(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger feature map to the smaller spatial size (the maps must be comparable)."""
    if s.shape[-2:] == t.shape[-2:]:
        return s, t
    size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
    if s.shape[-2:] != size:
        s = F.adaptive_avg_pool2d(s, size)
    if t.shape[-2:] != size:
        t = F.adaptive_avg_pool2d(t, size)
    return s, t


def at_loss(
    student_features: torch.Tensor, teacher_features: torch.Tensor, p: float = 2, mapping: str = "mean"
) -> torch.Tensor:
    """Mean squared difference of the two attention maps (a scalar)."""
    s, t = _match_size(student_features, teacher_features)
    return (attention_map(s, p, mapping) - attention_map(t, p, mapping)).pow(2).mean()


def kd_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> dict[str, torch.Tensor]:
    """Hinton KD split into its two weighted parts: {"kd": alpha·T²·KL, "ce": (1 − alpha)·CE}."""
    t = temperature
    log_p = F.log_softmax(full(student_logits) / t, dim=1)
    q = F.softmax(full(teacher_logits) / t, dim=1)
    kl = F.kl_div(log_p, q, reduction="batchmean") * (t * t)  # T² keeps gradient magnitudes T-independent
    ce = F.cross_entropy(full(student_logits), labels)
    return {"kd": kl * alpha, "ce": ce * (1.0 - alpha)}


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """Hinton KD: KL(batchmean)·T²·alpha + cross-entropy·(1 − alpha)."""
    terms = kd_terms(student_logits, teacher_logits, labels, temperature, alpha)
    return terms["kd"] + terms["ce"]


class DistillLoss:
    """The loss of one distillation step, returned as named terms so logs and tests see each part.

    Terms: `ce` (cross-entropy, weighted by 1 − alpha under KD), `kd`, `at.<student point>` per pair
    (already multiplied by beta), and `total`, their sum.
    """

    def __init__(
        self,
        pair_names: Sequence[str] = (),
        *,
        beta: float = 1000.0,
        p: float = 2,
        mapping: str = "mean",
        kd: bool = True,
        alpha: float = 0.9,
        temperature: float = 4.0,
    ):
        self.pair_names = list(pair_names)
        self.beta, self.p, self.mapping = beta, p, mapping
        self.kd, self.alpha, self.temperature = kd, alpha, temperature

    def __call__(
        self,
        student_logits: torch.Tensor,
        labels: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
        student_features: Sequence[torch.Tensor] = (),
        teacher_features: Sequence[torch.Tensor] = (),
        beta_scale: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        if self.kd and teacher_logits is not None:
            terms = kd_terms(student_logits, teacher_logits, labels, self.temperature, self.alpha)
        else:
            terms = {"ce": F.cross_entropy(full(student_logits), labels)}
        for name, s, t in zip(self.pair_names, student_features, teacher_features):
            terms[f"at.{name}"] = at_loss(s, t, self.p, self.mapping) * (self.beta * beta_scale)
        terms["total"] = sum(terms.values())
        return terms
