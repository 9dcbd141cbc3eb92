"""The model registry: recipes name models (`wrn-16-2`, `resnet18`), never import paths.

Registered factories build an `nn.Module` whose `feature_info` lists its attention points as data:
`FeaturePoint(module, channels, stride)` — the module path whose output is a stage output, its channel count,
and its stride relative to the input. Attention transfer pairs these points between teacher and student.
A model without one (the other torchvision classifiers) gets its points from `distill.points.candidate_points`.
Also here: self-describing checkpoints (`checkpoint`), pruned models rebuilt from their channel plan (`plan`),
parameter and FLOP counts (`measure`), evaluation in PyTorch (`evaluate`) and BatchNorm statistics
(`batchnorm`). May import core.
"""

from compressor.models.registry import FeaturePoint, check_arch, create_model, is_registered, list_models, register_model
from compressor.models import resnet as _resnet  # noqa: F401  (registers the torchvision ResNets)
from compressor.models import wrn as _wrn  # noqa: F401  (registers wrn-D-K)
from compressor.models import torchvision_models as _tv  # noqa: F401  (every other torchvision classifier, by its name)
from compressor.models import timm_models as _timm  # noqa: F401  (timm:NAME, with the optional timm package)

__all__ = ["FeaturePoint", "check_arch", "create_model", "is_registered", "list_models", "register_model"]
