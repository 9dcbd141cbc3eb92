"""Top-1 accuracy and mean cross-entropy of a classifier over (images, labels) batches, in eval mode."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F

Labelled = Iterable[tuple[torch.Tensor, torch.Tensor]]  # (images, labels) batches of a split, in order


def evaluate(model: nn.Module, batches: Labelled, device: torch.device, predictions: bool = False) -> dict:
    """Top-1 accuracy (%), mean cross-entropy and the largest |logit| of a model on a split, in eval mode and fp32
    (the numbers are compared with onnxruntime's); with `predictions`, also every image's top-1 class (a CPU
    tensor, in the split's order). CUDA convolutions run in full fp32: cuDNN's default TF32 would round their
    inputs to 10-bit mantissas and flip near-tied images.
    """
    tf32 = torch.backends.cudnn.allow_tf32
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
    try:
        return _evaluate(model, batches, device, predictions)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


@torch.no_grad()
def _evaluate(model: nn.Module, batches: Labelled, device: torch.device, predictions: bool) -> dict:
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=device, dtype=torch.long)
    loss_sum = torch.zeros((), device=device)
    peak = torch.zeros((), device=device)  # the largest |logit|: the training loop's divergence check reads it
    n, predicted = 0, []
    for x, y in batches:
        logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        peak = torch.maximum(peak, logits.detach().abs().amax().float())
        top1 = logits.argmax(1)
        correct += (top1 == y).sum()
        if predictions:
            predicted.append(top1)
        n += len(y)
    model.train(was_training)
    out = {"accuracy": 100.0 * correct.item() / max(n, 1), "loss": loss_sum.item() / max(n, 1), "images": n,
           "max_abs_logit": peak.item()}
    if predictions:
        out["predictions"] = torch.cat(predicted).cpu() if predicted else torch.zeros(0, dtype=torch.long)
    return out
