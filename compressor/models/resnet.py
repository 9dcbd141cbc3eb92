"""torchvision's classification ResNets, registered under their torchvision names.

Attention points are the four stage outputs `layer1`..`layer4` (strides 4, 8, 16, 32). A width multiplier
(`resnet18-w0.5`) scales every stage's channels, for students smaller than the smallest torchvision ResNet.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from compressor.models.registry import FeaturePoint, register_model

DEPTHS = {18: "resnet18", 34: "resnet34", 50: "resnet50", 101: "resnet101", 152: "resnet152"}


def build_resnet(depth: int, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    block = tvm.resnet.BasicBlock if depth in (18, 34) else tvm.resnet.Bottleneck
    layers = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}[depth]
    if width == 1.0:
        model = tvm.resnet.ResNet(block, layers, num_classes=num_classes)
    else:
        # torchvision's ResNet hard-codes 64 base channels; build it then rescale by rebuilding with a patched base
        model = _scaled_resnet(block, layers, num_classes, width)
    if in_channels != 3:
        old = model.conv1
        model.conv1 = nn.Conv2d(in_channels, old.out_channels, 7, 2, 3, bias=False)
    expansion = block.expansion
    base = model.layer1[0].conv1.in_channels if width != 1.0 else 64
    model.feature_info = [
        FeaturePoint(f"layer{i + 1}", int(base * 2**i) * expansion, 4 * 2**i) for i in range(4)
    ]
    return model


def _scaled_resnet(block, layers, num_classes: int, width: float) -> nn.Module:
    class Scaled(tvm.resnet.ResNet):
        def __init__(self):
            nn.Module.__init__(self)
            self._norm_layer = nn.BatchNorm2d
            self.dilation, self.groups, self.base_width = 1, 1, 64
            planes = [max(8, int(c * width)) for c in (64, 128, 256, 512)]
            self.inplanes = planes[0]
            self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(self.inplanes)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(block, planes[0], layers[0])
            self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
            self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
            self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(planes[3] * block.expansion, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    return Scaled()


def _register(depth: int, name: str) -> None:
    @register_model(name)
    def factory(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
        return build_resnet(depth, num_classes, in_channels)


for _d, _n in DEPTHS.items():
    _register(_d, _n)


@register_model(pattern=r"resnet(18|34|50|101|152)-w(\d+(?:\.\d+)?)", example="resnetD-wX")
def resnet_width(match, num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return build_resnet(int(match.group(1)), num_classes, in_channels, float(match.group(2)))
