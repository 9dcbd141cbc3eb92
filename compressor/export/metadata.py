"""What an exported model records about itself (ONNX metadata): its architecture, classes, input shape and how an
image becomes its input, for `compress verify` and for whoever deploys it."""

from __future__ import annotations

import json

from compressor.data.splits import DataBundle


def onnx_metadata(arch: str, data: DataBundle, kind: str) -> dict[str, str]:
    return {
        "compressor.arch": arch,
        "compressor.kind": kind,
        "compressor.classes": json.dumps(data.classes),
        "compressor.mean": json.dumps(list(data.mean)),
        "compressor.std": json.dumps(list(data.std)),
        "compressor.input_shape": json.dumps(list(data.input_shape)),
        "compressor.dataset": data.name,
        "compressor.preprocess": json.dumps(preprocess(data)),
    }


def preprocess(data: DataBundle) -> dict:
    """How an image becomes the model's input, for whoever deploys it: the evaluation transform and normalisation
    (an ImageFolder: shorter side to resize, centre crop; the built-in datasets are used at their own size)."""
    from compressor.data.streaming import EVAL_CROP

    c, h, w = data.input_shape
    steps = {"resize_shorter_side": round(h / EVAL_CROP), "center_crop": [h, w], "interpolation": "bilinear"} \
        if data.name == "imagefolder" else {"size": [h, w]}
    return {**steps, "channels": c, "scale": 1 / 255, "mean": list(data.mean), "std": list(data.std)}
