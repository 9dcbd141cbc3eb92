"""One schedule for everything that decays during training: the learning rate and every loss term's weight.

    factor("cosine",   t, total)               = (1 + cos(pi * min(t, total) / total)) / 2     (as CosineAnnealingLR)
    factor("multistep", t, total, milestones, g) = g ** (number of milestones <= t)             (as MultiStepLR)
    factor("constant", t, total)               = 1

`t` counts what the caller steps by: optimiser steps for the learning rate (stepped every iteration; its
milestones, given in epochs, are converted to steps by the caller), epochs for a term's weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

KINDS = ("constant", "multistep", "cosine")
ALIASES = {"step": "multistep"}  # an older name of distill.at.beta_schedule's, still read


def factor(kind: str, t: int, total: int, milestones: Sequence[int] = (), gamma: float = 0.1) -> float:
    kind = ALIASES.get(kind, kind)
    if kind == "constant":
        return 1.0
    if kind == "multistep":
        return gamma ** sum(t >= m for m in milestones)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
    raise ValueError(f"unknown schedule {kind!r} (one of {', '.join(KINDS)})")
