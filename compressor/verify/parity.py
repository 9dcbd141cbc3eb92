"""Parity: PyTorch and onnxruntime must compute the same logits on real test images, and the same top-1 class on
the whole test split but for near-ties."""

from __future__ import annotations

import torch

from compressor.data.batches import Normalize
from compressor.data.splits import DataBundle, stratified_indices
from compressor.verify.gates import gate

PARITY_IMAGES = 68  # real test images compared at batch 1 and 17 (4 full batches of 17), drawn across classes


def agreement_limit(images: int) -> int:
    """How many test images' top-1 may differ between PyTorch and onnxruntime: 0.1 % of them, at least 1.

    With logits equal to within the parity tolerance only near-ties can flip; more is a broken export."""
    return max(1, images // 1000)


def parity_images(split, data: DataBundle, seed: int, n: int = PARITY_IMAGES, mean=None, std=None) -> torch.Tensor:
    """`n` normalised test images drawn across the classes (seeded), (n, C, H, W) float on the CPU."""
    pick = stratified_indices(split.labels, n, seed)
    return Normalize(mean or data.mean, std or data.std, torch.device("cpu"))(split.take(pick).images).contiguous()


def parity_batch_sizes(images: int) -> tuple[int, ...]:
    """1 and 17 (a size other than the export's example batch, and not a divisor of the image count), fewer when
    the test split is smaller than 17 images."""
    return tuple(dict.fromkeys(min(b, images) for b in (1, 17)))


def parity_gate(name: str, parity: dict, v) -> dict:
    """max |PyTorch - ONNX| against max_abs_diff + parity_rtol * max|logit|: fp32 rounding grows with the logits'
    scale, so a correct export of a network with logits ~250 differs by more than one with logits ~10."""
    limit = v.max_abs_diff + v.parity_rtol * parity["scale"]
    return gate(name, limit, parity["max_abs_diff"], parity["max_abs_diff"] <= limit)
