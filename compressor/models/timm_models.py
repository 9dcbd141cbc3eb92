"""timm models by name, `timm:NAME` (e.g. `timm:resnet18`), when the optional `timm` extra is installed.

Built with `pretrained=False` (nothing is downloaded: the weights come from the user's state_dict) and the
data's classes and channels (`num_classes`, `in_chans`). timm describes each model's stage outputs in its
`feature_info` (module, channels, reduction), the same data `features_only` uses; it becomes our feature_info.
"""

from __future__ import annotations

import difflib

from torch import nn

from compressor.core.errors import UserError
from compressor.models.registry import FeaturePoint, register_model


def timm_problem(name: str) -> str | None:
    """Why `timm:<name>` names no model (timm missing, or no such timm model, with the closest ones), or None;
    imports timm, and builds nothing."""
    try:
        import timm
    except ImportError:
        return f"timm:{name}: timm models need the optional timm package: pip install 'compressor[timm]'"
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        return f"unknown timm model {name!r}" + (f"; did you mean {', '.join('timm:' + c for c in close)}?" if close
                                                  else " (timm.list_models() lists the names)")
    return None


def _check(match) -> str | None:
    return timm_problem(match.group(1))


@register_model(pattern=r"timm:(.+)", example="timm:NAME", check=_check)
def timm_model(match, num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    name = match.group(1)
    problem = timm_problem(name)
    if problem:
        raise UserError(problem)
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and all(isinstance(d, dict) and "module" in d for d in info):
        model.feature_info = [FeaturePoint(d["module"], d["num_chs"], d["reduction"]) for d in info]
    else:  # no declared stages: the attention points are found by a dry forward
        model.feature_info = []
    return model
