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

import torch
from torch import nn

from .features import probe_points
from .losses import _match_size, full


def feature_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, adapter: nn.Module) -> torch.Tensor:
    """Mean squared difference of the adapted student map and the teacher map (a scalar)."""
    s, t = _match_size(student_features, teacher_features)  # pooling first: a 1x1 conv commutes with it, and is cheaper
    return (full(adapter(s)) - full(t)).pow(2).mean()


class FeatureAdapters(nn.Module):
    """One adapter per pair: Conv2d(Cs, Ct, 1) when the channel counts differ, else identity."""

    def __init__(self, channels: Sequence[tuple[int, int]]):  # [(student channels, teacher channels)] per pair
        super().__init__()
        self.adapters = nn.ModuleList(
            [nn.Conv2d(cs, ct, 1, bias=False) if cs != ct else nn.Identity() for cs, ct in channels]
        )

    @classmethod
    def for_pairs(
        cls, student: nn.Module, teacher: nn.Module, pairs: Sequence[tuple[str, str, str]], input_shape
    ) -> "FeatureAdapters":
        """Adapters for (name, teacher module, student module) pairs, channel counts from one dry forward each."""
        s_points = probe_points(student, input_shape, [p[2] for p in pairs])
        t_points = probe_points(teacher, input_shape, [p[1] for p in pairs])
        return cls([(s.shape[0], t.shape[0]) for s, t in zip(s_points, t_points)])

    def terms(
        self, names: Sequence[str], student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor],
        beta: float,
    ) -> dict[str, torch.Tensor]:
        """{"feat.<name>": beta * feature_loss} for every pair."""
        return {
            f"feat.{name}": beta * feature_loss(s, t, adapter)
            for name, s, t, adapter in zip(names, student_features, teacher_features, self.adapters)
        }
