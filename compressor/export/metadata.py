"""What an exported model records about itself (ONNX metadata): its architecture, classes, input shape and how an
image becomes its input, for `compress verify` and for whoever deploys it.

Written from one preprocessing record (core.preprocess): `compress distill` from the run's data (`onnx_metadata`),
`compress export` from the checkpoint, which carries the same record (`checkpoint_metadata`): a student exported
either way carries the same metadata.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from compressor.core.preprocess import Preprocess
from compressor.data.splits import DataBundle
from compressor.models.checkpoint import reported_arch


def model_metadata(arch: str, kind: str, *, classes: Sequence[str], pre: Preprocess) -> dict[str, str]:
    return {
        "compressor.arch": arch,
        "compressor.kind": kind,
        "compressor.classes": json.dumps(list(classes)),
        "compressor.mean": json.dumps(list(pre.mean)),
        "compressor.std": json.dumps(list(pre.std)),
        "compressor.input_shape": json.dumps(list(pre.input_shape)),
        "compressor.dataset": pre.dataset,
        "compressor.preprocess": json.dumps(pre.metadata()),
    }


def onnx_metadata(arch: str, data: DataBundle, kind: str) -> dict[str, str]:
    """The metadata of a model trained on `data`."""
    return model_metadata(arch, kind, classes=data.classes, pre=data.preprocess)


def checkpoint_metadata(ck: dict) -> dict[str, str]:
    """The metadata of a compressor checkpoint's model, its architecture named as distill names it."""
    return model_metadata(reported_arch(ck), ck.get("kind", "model"), classes=ck["classes"],
                          pre=Preprocess.of_checkpoint(ck))
