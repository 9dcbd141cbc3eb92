"""F-ActT, the paper's baseline: transfer the teacher's full feature maps instead of their attention maps.

    feat.<pair> = beta * mean((adapter(S) - T)^2)        S: (N, Cs, H, W) student, T: (N, Ct, H', W') teacher

At each attention pair the student's map goes through a trainable 1x1 convolution from Cs to Ct channels when
the counts differ (a FitNets-style regressor; identity when they match), and the larger map is average-pooled to
the smaller spatial size, as `at_loss` does. The adapters are trained with the student (their parameters join
the optimizer and the resume state) but belong to the loss, not to the student: they are never part of the
exported checkpoint or ONNX file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from compressor.distill.at import match_size
from compressor.distill.pairs import Pair
from compressor.distill.terms import PairTerm, Step, Weight, full


def feature_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, adapter: nn.Module) -> torch.Tensor:
    """Mean squared difference of the adapted student map and the teacher map (a scalar)."""
    s, t = match_size(student_features, teacher_features)  # pooling first: a 1x1 conv commutes with it, and is cheaper
    return (full(adapter(s)) - full(t)).pow(2).mean()


class FeatureAdapters(nn.Module):
    """One adapter per pair: Conv2d(Cs, Ct, 1) when the channel counts differ, else identity."""

    def __init__(self, channels: Sequence[tuple[int, int]]):  # [(student channels, teacher channels)] per pair
        super().__init__()
        self.adapters = nn.ModuleList(
            [nn.Conv2d(cs, ct, 1, bias=False) if cs != ct else nn.Identity() for cs, ct in channels]
        )

    @classmethod
    def for_pairs(cls, pairs: Sequence[Pair]) -> "FeatureAdapters":
        """Adapters for the pairs, from their points' channel counts."""
        return cls([(p.student.shape[0], p.teacher.shape[0]) for p in pairs])


@dataclass
class FeatureTerm(PairTerm):
    """`feat.<pair>`: feature_loss through the pair's adapter."""

    adapter: nn.Module
    prefix: ClassVar[str] = "feat"
    autocast: ClassVar[bool] = True  # the adapter is a convolution

    def __call__(self, step: Step) -> torch.Tensor:
        return feature_loss(*self.outputs(step), self.adapter)


DATA_PARALLEL = False  # its 1x1 adapters train outside the student: DDP would not average them


def build(ctx) -> list[FeatureTerm]:
    """One term per pair under `distill.feature` with a teacher, pairs and beta > 0; the adapters go to
    `ctx.trainable`, which the optimizer and the resume state take (the exported student never sees them)."""
    f = ctx.distill.feature
    if not ctx.on("feature") or not ctx.pairs:
        return []
    adapters = FeatureAdapters.for_pairs(ctx.pairs).to(ctx.device)
    ctx.trainable = adapters
    return [FeatureTerm(p.name, i, Weight(f.beta), a) for i, (p, a) in enumerate(zip(ctx.pairs, adapters.adapters))]
