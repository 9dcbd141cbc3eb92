"""BatchNorm running statistics: recomputed on a sample of training images, and how stale they are after training.

`recalibrate_bn(model, batches)` sets every BatchNorm's running mean and variance to the plain average over the
batches. Only the BatchNorm layers run in training mode: `torch.optim.swa_utils.update_bn` puts the whole model in
training mode, so stochastic depth (torchvision's EfficientNet, ConvNeXt) dropped whole residual branches and
dropout zeroed activations while the statistics were gathered — statistics of a network that inference never runs.

`stale_fraction(model, steps)`: after `steps` training steps a BatchNorm with momentum m still holds (1 - m)^steps
of the running statistics it had before training. torchvision's MobileNetV3 uses m = 0.01 (EfficientNet 0.1): after
7 steps 93 % of a grown student's statistics were those of its first weights, and its eval-mode logits reached
5e9 while its training-mode logits were 0.12 (measured, docs/RESULTS.md); recalibrating brought them to 0.44.

`init_residue(model, steps)`: the same leftover for a model trained from scratch, as a share of what it is left
in: BatchNorm starts at variance 1, and a layer whose activations vary far less than that is dominated by a 6 %
leftover of it (a MobileNetV3 teacher trained 280 steps at momentum 0.01 by `compress train`: 99 % of one layer's
running variance was the leftover, 10 % test accuracy in eval mode; 75.75 % with its statistics recomputed).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

_BN = nn.modules.batchnorm._BatchNorm
STALE_LIMIT = 0.05  # statistics more than 5 % from before training are recomputed (jobs.distill, jobs.teacher)


def batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, device: torch.device | None = None) -> int:
    """Every BatchNorm's running statistics anew: the plain average over `batches` (images, or (images, labels)),
    the rest of the model in eval mode. Returns the images seen; the model is left in eval mode."""
    layers = batchnorms(model)
    if not layers:
        return 0
    momenta = [bn.momentum for bn in layers]
    model.eval()
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the batches
        bn.train()
    seen = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            if device is not None:
                x = x.to(device)
            model(x)
            seen += len(x)
    finally:
        for bn, m in zip(layers, momenta):
            bn.momentum = m
        model.eval()
    return seen


def stale_fraction(model: nn.Module, steps: int) -> float:
    """The largest share of pre-training running statistics any BatchNorm still holds after `steps` steps: 0 for a
    cumulative-average BatchNorm (momentum None) or a model without BatchNorm."""
    shares = [(1.0 - bn.momentum) ** max(steps, 0) for bn in batchnorms(model) if bn.momentum is not None]
    return max(shares, default=0.0)


def init_residue(model: nn.Module, steps: int) -> float:
    """For a model trained `steps` steps from PyTorch's BatchNorm initialisation (running variance 1): the largest
    share, over BatchNorm layers, of a layer's running variance that is still that initial 1 (the median over its
    channels). 0 without BatchNorm or with cumulative averages (momentum None)."""
    shares = []
    for bn in batchnorms(model):
        if bn.momentum is None:
            continue
        left = (1.0 - bn.momentum) ** max(steps, 0)
        shares.append(min(1.0, left / max(float(bn.running_var.median()), 1e-12)))
    return max(shares, default=0.0)
