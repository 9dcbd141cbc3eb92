"""Parity: PyTorch and onnxruntime must compute the same logits on real test images, and the same top-1 class on
the whole test split but for near-ties."""

from __future__ import annotations

import torch

from compressor.data.splits import DataBundle, stratified_indices

PARITY_IMAGES = 68  # real test images compared at batch 1 and 17 (4 full batches of 17), drawn across classes


def parity_images(split, data: DataBundle, seed: int, n: int = PARITY_IMAGES, mean=None, std=None) -> torch.Tensor:
    """`n` normalised test images drawn across the classes (seeded), (n, C, H, W) float on the CPU."""
    pick = stratified_indices(split.labels, n, seed)
    return data.normalize(torch.device("cpu"), mean=mean, std=std)(split.take(pick).images).contiguous()


def parity_batch_sizes(images: int) -> tuple[int, ...]:
    """1 and 17 (a size other than the export's example batch, and not a divisor of the image count), fewer when
    the test split is smaller than 17 images."""
    return tuple(dict.fromkeys(min(b, images) for b in (1, 17)))
