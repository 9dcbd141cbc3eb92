"""A timm-style registry: small factory functions, looked up by name or by a name pattern."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import UserError


@dataclass(frozen=True)
class FeaturePoint:
    module: str  # dotted module path, as in model.named_modules()
    channels: int
    stride: int  # input size / output size


# exact names -> factory(num_classes, in_channels) ; patterns (regex, factory(match, ...), example names)
_MODELS: dict[str, Callable[..., nn.Module]] = {}
_PATTERNS: list[tuple[re.Pattern, Callable[..., nn.Module], str]] = []


def register_model(name: str | None = None, *, pattern: str | None = None, example: str = ""):
    """Decorator: register a factory under an exact `name`, or under a regex `pattern` (gets the match)."""

    def deco(fn):
        if pattern is not None:
            _PATTERNS.append((re.compile(pattern), fn, example or pattern))
        else:
            _MODELS[name or fn.__name__] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS) + [ex for _, _, ex in _PATTERNS]


def is_registered(name: str) -> bool:
    return name in _MODELS or any(p.fullmatch(name) for p, _, _ in _PATTERNS)


def create_model(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build a registered model; an unknown name fails at once with the closest valid names."""
    if name in _MODELS:
        model = _MODELS[name](num_classes=num_classes, in_channels=in_channels)
    else:
        for pat, fn, _ in _PATTERNS:
            m = pat.fullmatch(name)
            if m:
                model = fn(m, num_classes=num_classes, in_channels=in_channels)
                break
        else:
            close = difflib.get_close_matches(name, list_models(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(list_models())}"
            raise UserError(f"unknown model {name!r}{hint}")
    model.arch = name
    _validate_feature_info(model)
    return model


def _validate_feature_info(model: nn.Module) -> None:
    modules = dict(model.named_modules())
    for p in getattr(model, "feature_info", []):
        if p.module not in modules:  # a registry bug, not a user error
            raise AssertionError(f"{model.arch}: feature point {p.module!r} is not a module of the model")
