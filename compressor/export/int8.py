"""Static int8 quantisation of an exported fp32 model with onnxruntime (QDQ or QOperator, MinMax calibration).

    quantize_int8("student.onnx", "student.int8.onnx", train_images[:512])

Whether the int8 model ships (accuracy and speed against fp32) is verify.int8's decision.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from compressor.core.device import cpu_has_vnni
from compressor.core.errors import UserError
from compressor.core.fileio import atomic_path
from compressor.export.sessions import as_float32, check_onnx_file, image_inputs


class _ImageReader(CalibrationDataReader):
    """Feeds calibration images to the quantiser a batch at a time (the exported model has a dynamic batch axis):
    an array is cut into batches of 64, an iterable of arrays is read as it comes (one batch in memory at a time).
    Counts the images it gave."""

    def __init__(self, input_name: str, images, batch_size: int = 64):
        self.input_name, self.count = input_name, 0
        if isinstance(images, (np.ndarray, torch.Tensor)):
            whole = images
            images = (whole[i : i + batch_size] for i in range(0, len(whole), batch_size))
        self._batches = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        batch = as_float32(batch)  # (N, C, H, W)
        self.count += len(batch)
        return {self.input_name: batch}


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime's quantiser warns on the root logger for every BatchNorm it leaves unquantised ("Axis 1 is out
    of range for weight ... bn.weight"): noise to a user, whose report states what was quantised."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration_images,
    *,
    per_channel: bool = True,
    reduce_range: bool | None = None,
    quant_format: str = "qdq",
) -> dict:
    """Static int8 quantisation (QDQ or QOperator format, MinMax calibration on real, normalised training images).

    A few hundred images calibrate a small CNN well; all of `calibration_images` are used.
    Activations are uint8 and weights int8, onnxruntime's recommendation for x86 CPUs. `reduce_range`
    (7-bit weights) keeps 8-bit products from saturating on CPUs without VNNI; None = on exactly where this CPU
    lacks VNNI (`cpu_has_vnni`), so a VNNI machine keeps the full 8 bits.
    `quant_pre_process` runs first (symbolic shape inference and graph clean-up), as onnxruntime
    advises; the metadata of the fp32 model (class names, normalisation) is copied onto the result.
    """
    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    if quant_format not in formats:
        raise UserError(f"int8 format: qdq or qoperator (got {quant_format!r})")
    fp32 = check_onnx_file(fp32_path)
    reader = _ImageReader(image_inputs(fp32)[0].name, calibration_images)
    with tempfile.TemporaryDirectory(prefix="compressor-quant-") as work, _quiet_root_logger():
        prepared, quantized = Path(work) / "prepared.onnx", Path(work) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared),
            str(quantized),
            reader,
            quant_format=formats[quant_format],
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # MinMax keeps only each batch's per-tensor minima and maxima (ReduceMin/ReduceMax outputs), so its memory
            # does not grow with the images' size; its CalibMaxIntermediateOutputs would drop batches (onnxruntime
            # 1.2x clears them without merging), so it is not used
            calibrate_method=CalibrationMethod.MinMax,
        )
        model = onnx.load_model(quantized)
    present = {p.key for p in model.metadata_props}
    for prop in fp32.metadata_props:
        if prop.key not in present:
            model.metadata_props.append(prop)
    with atomic_path(out_path) as tmp:
        onnx.save_model(model, tmp, format="protobuf")
    return {
        "path": str(out_path),
        "format": {"qdq": "QDQ", "qoperator": "QOperator"}[quant_format],
        "activations": "uint8",
        "weights": "int8",
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "calibration_images": reader.count,
        "bytes": Path(out_path).stat().st_size,
    }
