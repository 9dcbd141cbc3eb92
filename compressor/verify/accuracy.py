"""Accuracy in onnxruntime: top-1 of an exported model over a whole split, normalised a batch at a time."""

from __future__ import annotations

import numpy as np
import torch

from compressor.data.splits import DataBundle
from compressor.export.sessions import onnx_predict


def onnx_split_predictions(session, split, data: DataBundle, batch_size: int = 256, mean=None, std=None) -> np.ndarray:
    """Top-1 class of an ONNX model for every image of a split, normalised a batch at a time (memory stays
    flat); `mean`/`std` override the data's (a model that records its own normalisation is fed with it)."""
    normalize = data.normalize(torch.device("cpu"), mean=mean, std=std)
    out = []
    for images, _ in split.chunks(batch_size):
        x = normalize(images.cpu()).contiguous().numpy()
        out.append(onnx_predict(session, x, batch_size).argmax(1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def accuracy_of(predictions: np.ndarray, split) -> float:
    return 100.0 * int((predictions == split.labels.cpu().numpy()).sum()) / max(len(split), 1)


def onnx_split_accuracy(session, split, data: DataBundle, batch_size: int = 256) -> float:
    """Top-1 (%) of an ONNX model over a whole split."""
    return accuracy_of(onnx_split_predictions(session, split, data, batch_size), split)
