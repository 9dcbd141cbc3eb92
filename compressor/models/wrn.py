"""Wide residual networks as in the attention-transfer paper (`wrn-D-K`, depth D = 6n + 4, width K).

Pre-activation basic blocks; widths 16 then 16·K, 32·K, 64·K; group strides 1, 2, 2. The attention points
are the three group outputs (before the final BN-ReLU), exactly where the reference code takes them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from compressor.core.errors import UserError
from compressor.models.registry import FeaturePoint, register_model


class Block(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus the input (or a 1x1 projection of the activated input)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(cin)
        self.conv0 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.convdim = nn.Conv2d(cin, cout, 1, stride, bias=False) if cin != cout or stride != 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o1 = F.relu(self.bn0(x))
        z = self.conv1(F.relu(self.bn1(self.conv0(o1))))
        return z + (self.convdim(o1) if self.convdim is not None else x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, width: float, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        problem = wrn_problem(depth, width)
        if problem:
            raise UserError(problem)
        n = (depth - 4) // 6
        widths = [max(1, int(16 * width)), max(1, int(32 * width)), max(1, int(64 * width))]
        self.depth, self.width = depth, width
        self.conv0 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        cin, groups = 16, []
        for g, (cout, stride) in enumerate(zip(widths, (1, 2, 2))):
            groups.append(nn.Sequential(*[Block(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)]))
            cin = cout
        self.group0, self.group1, self.group2 = groups
        self.bn = nn.BatchNorm2d(widths[2])
        self.fc = nn.Linear(widths[2], num_classes)
        self.feature_info = [FeaturePoint(f"group{i}", c, s) for i, (c, s) in enumerate(zip(widths, (1, 2, 4)))]
        for m in self.modules():  # He init for convolutions, as the reference code does
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.group2(self.group1(self.group0(self.conv0(x))))
        x = F.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # the reference pools 8x8 for 32x32 input; any size here
        return self.fc(x)


def wrn_problem(depth: int, width: float) -> str | None:
    """Why `wrn-<depth>-<width>` is no wide residual network, or None."""
    if depth < 10 or (depth - 4) % 6:
        return f"wrn-{depth}-{width:g}: depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...)"
    if width <= 0:
        return f"wrn-{depth}-{width:g}: width must be positive"
    return None


def _check(match) -> str | None:
    return wrn_problem(int(match.group(1)), float(match.group(2)))


@register_model(pattern=r"wrn-(\d+)-(\d+(?:\.\d+)?)", example="wrn-D-K", check=_check)
def wrn(match, num_classes: int = 10, in_channels: int = 3) -> WideResNet:
    return WideResNet(int(match.group(1)), float(match.group(2)), num_classes, in_channels)
