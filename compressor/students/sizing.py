"""Turn "a student 4x smaller" into a concrete architecture within the teacher's family.

`--student-size 0.25` is a fraction of the teacher's parameters, `200k` / `1.5M` an absolute count. The student
is the largest candidate of the teacher's family whose parameter count is not above that target (on a tie,
the deeper one: the paper's students keep depth for AT). Families:
- WRN (`wrn-D-K`): depth 10..40 (6n+4) and width 0.25..10;
- ResNet (torchvision's, and timm's `timm:resnet*`): depth 18/34/50 and a width multiplier (`resnet18-w0.5`);
- any other teacher (TorchScript or exported programs of other models, other torchvision or timm models):
  the WRN family, the documented fallback: it runs at any input size and spans about 20k to 40M parameters.
Candidates are built on the `meta` device without initialisation: sizing allocates no weights.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.nn import init

from compressor.core.errors import UserError
from compressor.models import create_model

WRN_DEPTHS = (10, 16, 22, 28, 40)
WRN_WIDTHS = (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 10)
RESNET_DEPTHS = (18, 34, 50)
RESNET_WIDTHS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
FALLBACK = "wrn"


@dataclass(frozen=True)
class Candidate:
    arch: str
    depth: int
    params: int


UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_amount(value: float | str, key: str, what: str, examples: str) -> tuple[str, float]:
    """0.25 -> ("fraction", 0.25); "200k" -> ("count", 2e5); "1.5M" -> ("count", 1.5e6); "2G" -> ("count", 2e9)."""
    if isinstance(value, (int, float)):
        return ("fraction", float(value)) if value <= 1 else ("count", float(value))
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*", value)
    if not m:
        raise UserError(f"{key}: {value!r} is neither a fraction (0.25) nor a {what} ({examples})")
    amount = float(m.group(1)) * UNITS[m.group(2).lower()]
    return ("fraction", amount) if amount <= 1 else ("count", amount)


def parse_size(size: float | str) -> tuple[str, float]:
    return parse_amount(size, "student.size", "parameter count", "200k, 1.5M")


def parse_flops(flops: float | str) -> tuple[str, float]:
    return parse_amount(flops, "student.flops", "FLOPs count", "40M, 1.5G")


def family_of(arch: str) -> str | None:
    """'wrn-16-2' -> wrn; 'resnet34', 'resnet18-w0.5', 'timm:resnet50', 'torchscript:ResNet' -> resnet; else None."""
    name = arch.rsplit(":", 1)[-1].lower()
    if name.startswith(("wrn-", "wideresnet")):
        return "wrn"
    if name.startswith("resnet"):
        return "resnet"
    return None


def _names(family: str) -> list[tuple[str, int]]:
    if family == "resnet":
        return [(f"resnet{d}" if w == 1.0 else f"resnet{d}-w{w:g}", d) for d in RESNET_DEPTHS for w in RESNET_WIDTHS]
    return [(f"wrn-{d}-{w:g}", d) for d in WRN_DEPTHS for w in WRN_WIDTHS]


@contextmanager
def shapes_only():
    """Build models on the meta device with the weight initialisers switched off: sizing needs shapes only,
    and initialising meta tensors still costs ~10x the construction (they run through reference kernels)."""
    saved = {name: getattr(init, name) for name in dir(init) if name.endswith("_") and not name.startswith("_")}
    for name in saved:
        setattr(init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        with torch.device("meta"):
            yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


@lru_cache(maxsize=None)
def candidates(family: str, num_classes: int, in_channels: int) -> tuple[Candidate, ...]:
    """Every student of the family with its parameter count for these classes and channels, smallest first."""
    out = []
    with shapes_only():
        for arch, depth in _names(family):
            params = sum(p.numel() for p in create_model(arch, num_classes, in_channels).parameters())
            out.append(Candidate(arch, depth, params))
    return tuple(sorted(out, key=lambda c: (c.params, c.depth)))


def student_flops(arch: str, num_classes: int, input_shape: tuple[int, int, int]) -> int:
    from compressor.models.measure import count_flops

    with shapes_only():
        model = create_model(arch, num_classes, input_shape[0])
    return count_flops(model, input_shape)  # FlopCounterMode counts on meta tensors too


def choose_student_size(
    teacher_arch: str, teacher_params: int, size: float | str, *, num_classes: int, input_shape: tuple[int, int, int]
) -> tuple[str, dict]:
    """The largest student of the teacher's family with at most the target's parameters, and why."""
    kind, value = parse_size(size)
    target = int(value * teacher_params) if kind == "fraction" else int(value)
    if target >= teacher_params:
        raise UserError(
            f"student.size: {size} means {target:,} parameters, not fewer than the teacher's {teacher_params:,}"
        )
    family = family_of(teacher_arch)
    label = family or f"{FALLBACK} (the fallback for a teacher of unknown family)"
    pool = candidates(family or FALLBACK, num_classes, input_shape[0])
    fitting = [c for c in pool if c.params <= target and c.arch != teacher_arch]
    if not fitting:
        raise UserError(
            f"student.size: no {label} student has at most {target:,} parameters "
            f"(the smallest, {pool[0].arch}, has {pool[0].params:,})"
        )
    best = fitting[-1]
    of = f"{value:g} of the teacher's {teacher_params:,}" if kind == "fraction" else f"target {size}"
    reason = (
        f"{best.arch}: the largest {label} network with at most {target:,} parameters ({of}); "
        f"it has {best.params:,} ({best.params / teacher_params:.1%} of the teacher)"
    )
    return best.arch, {
        "how": "sized", "arch": best.arch, "target": str(size), "target_params": target, "params": best.params,
        "flops": student_flops(best.arch, num_classes, input_shape), "teacher_params": teacher_params,
        "fraction_of_teacher": best.params / teacher_params, "family": family or FALLBACK,
        "fallback": family is None, "candidates": len(pool), "reason": reason,
    }
