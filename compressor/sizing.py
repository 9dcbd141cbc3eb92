"""Turn "a student 4x smaller" into a concrete architecture within the teacher's family.

Families: WRN (`wrn-D-K`: depth 6n+4 and width K), torchvision ResNets (depth 18/34/50 and a width multiplier
`resnetD-wX`). For any other teacher the fallback family is WRN. The largest candidate whose parameter count
is not above the target wins; ties go to the deeper network (the paper's students keep depth for AT).
"""

from __future__ import annotations

import re

from torch import nn

from .errors import UserError
from .models import create_model

WRN_DEPTHS = (10, 16, 22, 28, 40)
WRN_WIDTHS = (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 10)
RESNET_DEPTHS = (18, 34, 50)
RESNET_WIDTHS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def parse_size(size: float | str) -> tuple[str, float]:
    """0.25 -> ("fraction", 0.25); "200k" -> ("count", 200000); "1.5M" -> ("count", 1.5e6)."""
    if isinstance(size, (int, float)):
        return ("fraction", float(size)) if size <= 1 else ("count", float(size))
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", size)
    if not m:
        raise UserError(f"student.size: {size!r} is neither a fraction (0.25) nor a parameter count (200k, 1.5M)")
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]
    return ("fraction", value) if value <= 1 else ("count", value)


def _params(arch: str, num_classes: int, in_channels: int) -> int:
    return sum(p.numel() for p in create_model(arch, num_classes, in_channels).parameters())


def _family(teacher_arch: str) -> tuple[str, list[str]]:
    if teacher_arch.startswith("resnet"):
        names = [f"resnet{d}" if w == 1.0 else f"resnet{d}-w{w:g}" for d in RESNET_DEPTHS for w in RESNET_WIDTHS]
        return "resnet", names
    names = [f"wrn-{d}-{w:g}" for d in WRN_DEPTHS for w in WRN_WIDTHS]
    return ("wrn" if teacher_arch.startswith("wrn-") else "wrn (fallback for an unknown family)"), names


def choose_student_size(teacher_arch: str, teacher: nn.Module, size: float | str) -> tuple[str, dict]:
    kind, value = parse_size(size)
    teacher_params = sum(p.numel() for p in teacher.parameters())
    target = int(value * teacher_params) if kind == "fraction" else int(value)
    head = next((m for m in reversed(list(teacher.modules())) if isinstance(m, nn.Linear)), None)
    num_classes = head.out_features if head is not None else 10
    first = next((m for m in teacher.modules() if isinstance(m, nn.Conv2d)), None)
    in_channels = first.in_channels if first is not None else 3
    family, names = _family(teacher_arch)
    candidates = sorted(((_params(n, num_classes, in_channels), n) for n in names), key=lambda c: c[0])
    fitting = [c for c in candidates if c[0] <= target and c[1] != teacher_arch]
    if not fitting:
        smallest = candidates[0]
        raise UserError(
            f"student.size: no {family} student has at most {target:,} parameters "
            f"(the smallest, {smallest[1]}, has {smallest[0]:,})"
        )
    params, arch = fitting[-1]
    why = (
        f"{arch}: the largest {family} network with at most {target:,} parameters "
        + (f"({value:g} of the teacher's {teacher_params:,})" if kind == "fraction" else f"(target {size})")
        + f"; it has {params:,} ({params / teacher_params:.1%} of the teacher)"
    )
    return arch, {"how": "sized", "target": str(size), "target_params": target, "params": params, "family": family,
                  "reason": why}
