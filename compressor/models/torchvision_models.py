"""Every other torchvision classification model, under its torchvision name (`mobilenet_v3_small`, `vgg11`, ...).

They are built without weights (`weights=None`) and with the data's class count, so that a user's
fine-tuned `state_dict` loads into them. They declare no `feature_info`: their attention points are found
by `distill.points.candidate_points` (one dry forward; the last module at each resolution). For inputs other than
RGB the first convolution is rebuilt with the data's channel count.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from compressor.models.registry import is_registered, register_model

# Their auxiliary classifiers return a tuple while training; a teacher or student returns logits only.
NO_AUX = {"googlenet": {"aux_logits": False, "init_weights": True}, "inception_v3": {"aux_logits": False, "init_weights": True}}


def adapt_input_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Replace the first Conv2d (in registration order, the stem for these models) by one taking `in_channels`."""
    name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is not None and conv.in_channels != in_channels:
        model.set_submodule(name, nn.Conv2d(  # a stem is a dense convolution (groups=1)
            in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        ))
    return model


def _register(name: str) -> None:
    @register_model(name)
    def factory(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
        model = tvm.get_model(name, weights=None, num_classes=num_classes, **NO_AUX.get(name, {}))
        return adapt_input_channels(model, in_channels) if in_channels != 3 else model


for _name in tvm.list_models(module=tvm):
    if not is_registered(_name):  # resnet18..152 come from resnet.py, with feature_info and widths
        _register(_name)
