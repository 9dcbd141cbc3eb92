"""The model registry: recipes name models (`wrn-16-2`, `resnet18`), never import paths.

Every registered factory builds an `nn.Module` whose `feature_info` lists its attention points as data:
`FeaturePoint(module, channels, stride)` — the module path whose output is a stage output, its channel count,
and its stride relative to the input. Attention transfer pairs these points between teacher and student.
"""

from .registry import FeaturePoint, create_model, is_registered, list_models, register_model
from . import resnet as _resnet  # noqa: F401  (registers the torchvision ResNets)
from . import wrn as _wrn  # noqa: F401  (registers wrn-D-K)

__all__ = ["FeaturePoint", "create_model", "is_registered", "list_models", "register_model"]
