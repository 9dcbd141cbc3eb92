"""A timm-style registry: small factory functions, looked up by name or by a name pattern."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from compressor.core.errors import UserError


@dataclass(frozen=True)
class FeaturePoint:
    module: str  # dotted module path, as in model.named_modules()
    channels: int
    stride: int  # input size / output size


# exact names -> factory(num_classes, in_channels) ; patterns (regex, factory(match, ...), example names)
_MODELS: dict[str, Callable[..., nn.Module]] = {}
_PATTERNS: list[tuple[re.Pattern, Callable[..., nn.Module], str]] = []
# pattern -> check(match): why a name the pattern matches still names no model (a str), or None; never builds one
_CHECKS: dict[re.Pattern, Callable[[re.Match], str | None]] = {}
# what `unknown_model` lists: the families, not every torchvision name
KNOWN_HINT = ("known: wrn-D-K (e.g. wrn-16-2), resnet18|34|50|101|152, resnetD-wX (e.g. resnet18-w0.5), "
              "torchvision classifier names (e.g. mobilenet_v3_small), timm:NAME")


def register_model(name: str | None = None, *, pattern: str | None = None, example: str = "",
                   check: Callable[[re.Match], str | None] | None = None):
    """Decorator: register a factory under an exact `name`, or under a regex `pattern` (gets the match); a
    pattern's `check(match)` tells, without building anything, why a matching name still names no model."""

    def deco(fn):
        if pattern is not None:
            compiled = re.compile(pattern)
            _PATTERNS.append((compiled, fn, example or pattern))
            if check is not None:
                _CHECKS[compiled] = check
        else:
            _MODELS[name or fn.__name__] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS) + [ex for _, _, ex in _PATTERNS]


def is_registered(name: str) -> bool:
    """Whether `name` is an exact name or matches a pattern (a pattern's model may still not exist: check_arch)."""
    return name in _MODELS or any(p.fullmatch(name) for p, _, _ in _PATTERNS)


def check_arch(name: str) -> str | None:
    """Why `name` names no model `create_model` can build (one line, with the names that exist), or None.

    Cheap: nothing is built. A pattern's own check runs (a WRN's depth; for `timm:NAME`, that timm is installed
    and knows NAME, which imports timm only then)."""
    if name in _MODELS:
        return None
    for pat, _, _ in _PATTERNS:
        m = pat.fullmatch(name)
        if m:
            check = _CHECKS.get(pat)
            return check(m) if check is not None else None
    return unknown_model(name)


def unknown_model(name: str) -> str:
    """The one-line message for a name no factory matches: the closest names, then the families that exist."""
    close = difflib.get_close_matches(name, list_models(), n=3)
    return f"unknown model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "") + f" ({KNOWN_HINT})"


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
            raise UserError(unknown_model(name))
    model.arch = name
    _validate_feature_info(model)
    return model


def _validate_feature_info(model: nn.Module) -> None:
    modules = dict(model.named_modules())
    for p in getattr(model, "feature_info", []):
        if p.module not in modules:  # a registry bug, not a user error
            raise AssertionError(f"{model.arch}: feature point {p.module!r} is not a module of the model")
