"""Attention transfer (Zagoruyko & Komodakis 2017), exactly as the reference code computes it.

    attention_map(A) = normalize(mean_c |A|^p)        (N, C, H, W) -> (N, H*W)
    at_loss(S, T)    = mean((Q_S - Q_T)^2)             one number per teacher/student pair

The objective adds beta * at_loss for every pair (beta = 1000 in the paper: the weight of each pair, as in the
reference code, which uses `beta * sum(pair losses)` on one GPU); beta may decay over training
(`distill.at.beta_schedule`: the paper decays it when AT is combined with KD without saying how).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.nn import functional as F

from compressor.distill.terms import PairTerm, Step, Weight, full


class _ChannelEnergy(torch.autograd.Function):
    """(N, C, H, W) -> (N, H, W): mean over channels of A², with the gradient 2·A·g/C written directly.

    `A.pow(2).mean(1)` writes A² in full, reads it back, and its backward expands the gradient before
    multiplying (three passes over an (N, C, H, W) tensor each way); this is one reduction forward and one
    elementwise kernel backward, with the same values and gradients.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a)
        return torch.linalg.vector_norm(a, 2, dim=1).square() / a.shape[1]  # no (N, C, H, W) temporary

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (a,) = ctx.saved_tensors
        return a * (grad * (2.0 / a.shape[1])).unsqueeze(1)  # (N, 1, H, W) broadcast over channels


def channel_energy(a: torch.Tensor) -> torch.Tensor:
    """mean_c a² for (N, C, H, W) -> (N, H, W); the same as `a.pow(2).mean(1)`, in fewer passes."""
    return _ChannelEnergy.apply(a)


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


def match_size(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    s, t = match_size(student_features, teacher_features)
    return (attention_map(s, p, mapping) - attention_map(t, p, mapping)).pow(2).mean()


@dataclass
class AttentionTerm(PairTerm):
    """`at.<pair>`: at_loss between the student's and the teacher's outputs at the pair."""

    p: float = 2
    mapping: str = "mean"
    prefix: ClassVar[str] = "at"

    def __call__(self, step: Step) -> torch.Tensor:
        return at_loss(*self.outputs(step), self.p, self.mapping)


DATA_PARALLEL = True


def build(ctx) -> list[AttentionTerm]:
    """One term per pair, when `distill.at` is on (beta > 0) and there is a teacher and pairs."""
    at = ctx.distill.at
    if not ctx.on("at") or not ctx.pairs:
        return []
    weight = Weight(at.beta, at.beta_schedule, at.beta_milestones or ctx.milestones, at.beta_gamma)
    return [AttentionTerm(pair.name, i, weight, at.p, at.mapping) for i, pair in enumerate(ctx.pairs)]
