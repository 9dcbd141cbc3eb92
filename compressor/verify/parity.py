"""Parity: PyTorch and onnxruntime must compute the same logits on real test images, and the same top-1 class on
the whole test split but for near-ties."""

from __future__ import annotations

import torch

from compressor.data.splits import DataBundle, stratified_indices
from compressor.verify.gates import gate

PARITY_IMAGES = 68  # real test images compared at batch 1 and 17 (4 full batches of 17), drawn across classes
# An int8 model computes other logits by design: its parity with the fp32 checkpoint is a relative tolerance and an
# agreement in top-1 over the test split. Measured (2026-12-06) on the shipped WRN-16-2 teacher quantised by
# export.int8 (QDQ, 512 calibration images): max |fp32 - int8| 0.77 on the 10,000 test images with logits up to
# 16.8 (4.5 %), 0.24 on the 68 parity images (1.7 %); 36 of 10,000 top-1 classes differ (0.36 %). A broken
# quantisation (a wrong scale, a layer left out of calibration) is off by far more.
INT8_PARITY_RTOL = 0.1  # |fp32 - int8| <= 10 % of the largest |logit|
INT8_DISAGREEMENT = 0.01  # at most 1 % of the test images (and at least 1) with another top-1


def agreement_limit(images: int) -> int:
    """How many test images' top-1 may differ between PyTorch and onnxruntime: 0.1 % of them, at least 1.

    With logits equal to within the parity tolerance only near-ties can flip; more is a broken export."""
    return max(1, images // 1000)


def parity_images(split, data: DataBundle, seed: int, n: int = PARITY_IMAGES, mean=None, std=None) -> torch.Tensor:
    """`n` normalised test images drawn across the classes (seeded), (n, C, H, W) float on the CPU."""
    pick = stratified_indices(split.labels, n, seed)
    return data.normalize(torch.device("cpu"), mean=mean, std=std)(split.take(pick).images).contiguous()


def parity_batch_sizes(images: int) -> tuple[int, ...]:
    """1 and 17 (a size other than the export's example batch, and not a divisor of the image count), fewer when
    the test split is smaller than 17 images."""
    return tuple(dict.fromkeys(min(b, images) for b in (1, 17)))


def int8_parity_gates(parity: dict, differ: int, images: int) -> list[dict]:
    """An int8 model against the fp32 checkpoint it was quantised from: relative logits and top-1 agreement."""
    limit = INT8_PARITY_RTOL * parity["scale"]
    agree = max(1, int(INT8_DISAGREEMENT * images))
    return [gate("max_abs_diff", limit, parity["max_abs_diff"], parity["max_abs_diff"] <= limit,
                 f"an int8 model: the limit is {INT8_PARITY_RTOL:g} x the largest |logit|, {parity['scale']:.4g}"),
            gate("int8_agreement", agree, differ, differ <= agree,
                 f"test images whose top-1 differs from the fp32 checkpoint's, of {images}")]


def parity_gate(name: str, parity: dict, v) -> dict:
    """max |PyTorch - ONNX| against max_abs_diff + parity_rtol * max|logit|: fp32 rounding grows with the logits'
    scale, so a correct export of a network with logits ~250 differs by more than one with logits ~10."""
    limit = v.max_abs_diff + v.parity_rtol * parity["scale"]
    detail = (f"the limit is {v.max_abs_diff:g} + {v.parity_rtol:g} x the largest |logit|, {parity['scale']:.4g}; "
              "logits far beyond a healthy classifier's (tens) or a model that amplifies rounding make PyTorch and "
              "onnxruntime disagree although the export is faithful: a sign the training blew up")
    return gate(name, limit, parity["max_abs_diff"], parity["max_abs_diff"] <= limit, detail)
