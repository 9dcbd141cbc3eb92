"""SGD and its learning-rate schedule, stepped every iteration (core.schedule)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from compressor.core.schedule import factor


def lr_factor(cfg, epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate multiplier after `step` optimiser steps, for a scheduler stepped every iteration.

    Per-iteration (not per-epoch) scheduling matters for short budgets: with a per-epoch cosine the whole last
    epoch runs at a high rate, and BatchNorm's running statistics lag the fast-moving weights (measured here:
    54% eval-mode vs 73% batch-statistics accuracy after 2 epochs); annealing within the epoch removes the gap.
    Multistep milestones stay in epochs, as in the paper.
    """
    total = max(1, epochs * steps_per_epoch)
    milestones = [m * steps_per_epoch for m in cfg.milestones]
    return lambda step: factor(cfg.schedule, step, total, milestones, cfg.gamma)


def build_optimizer(
    model: nn.Module, cfg, epochs: int, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, epochs, steps_per_epoch))
