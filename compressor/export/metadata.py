"""What an exported model records about itself (ONNX metadata): its architecture, classes, input shape and how an
image becomes its input, for `compress verify` and for whoever deploys it.

`compress distill` writes it from the run's data (`onnx_metadata`), `compress export` from the checkpoint, which
records the same fields (`checkpoint_metadata`): a student exported either way carries the same metadata.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from compressor.data.splits import DataBundle
from compressor.data.streaming import EVAL_CROP
from compressor.models.checkpoint import reported_arch


def model_metadata(arch: str, kind: str, *, classes: Sequence[str], mean: Sequence[float], std: Sequence[float],
                   input_shape: Sequence[int], dataset: str) -> dict[str, str]:
    return {
        "compressor.arch": arch,
        "compressor.kind": kind,
        "compressor.classes": json.dumps(list(classes)),
        "compressor.mean": json.dumps(list(mean)),
        "compressor.std": json.dumps(list(std)),
        "compressor.input_shape": json.dumps(list(input_shape)),
        "compressor.dataset": dataset,
        "compressor.preprocess": json.dumps(preprocess(dataset, input_shape, mean, std)),
    }


def onnx_metadata(arch: str, data: DataBundle, kind: str) -> dict[str, str]:
    """The metadata of a model trained on `data`."""
    return model_metadata(arch, kind, classes=data.classes, mean=data.mean, std=data.std,
                          input_shape=data.input_shape, dataset=data.name)


def checkpoint_metadata(ck: dict) -> dict[str, str]:
    """The metadata of a compressor checkpoint's model, its architecture named as distill names it."""
    return model_metadata(reported_arch(ck), ck.get("kind", "model"), classes=ck["classes"], mean=ck["mean"], std=ck["std"],
                          input_shape=ck["input_shape"], dataset=ck.get("dataset", ""))


def preprocess(dataset: str, input_shape: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> dict:
    """How an image becomes the model's input, for whoever deploys it: the evaluation transform and normalisation
    (an ImageFolder: shorter side to resize, centre crop; the built-in datasets are used at their own size)."""
    c, h, w = input_shape
    steps = {"resize_shorter_side": round(h / EVAL_CROP), "center_crop": [h, w], "interpolation": "bilinear"} \
        if dataset == "imagefolder" else {"size": [h, w]}
    return {**steps, "channels": c, "scale": 1 / 255, "mean": list(mean), "std": list(std)}
