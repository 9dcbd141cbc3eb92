"""`compress export`: a checkpoint (or any teacher format) to ONNX, with the parity check that proves it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from compressor.core.errors import GateFailure, UserError
from compressor.core.progress import console
from compressor.data.datasets import load_data
from compressor.export.metadata import checkpoint_metadata
from compressor.export.onnx import check_parity, export_onnx
from compressor.jobs.common import check_output
from compressor.models import checkpoint as ckpt_io
from compressor.recipe.schema import DataConfig
from compressor.teachers.load import LoadedModel, open_model
from compressor.verify.parity import PARITY_IMAGES


def export_checkpoint(
    path: Path, out: Path, *, opset: int = 18, max_abs_diff: float = 1e-4, rtol: float = 1e-5,
    input_shape: tuple[int, int, int] | None = None, arch: str | None = None, trust: bool = False, force: bool = False,
) -> dict:
    """`compress export`: a checkpoint to ONNX plus the parity check on real test images of its dataset.

    The other teacher formats (state_dict with `arch`, TorchScript, torch.export, a trusted pickle) export too,
    with the parity check on seeded random inputs of `input_shape` (or the shape the file records)."""
    check_output(out, [path], force)
    teacher = open_model(path, arch=arch, input_shape=input_shape, trust=trust, names=False)
    if teacher.source != "compressor checkpoint":
        return _export_model_file(path, teacher, out, opset=opset, max_abs_diff=max_abs_diff, rtol=rtol,
                                  shape=input_shape)
    model, ck = ckpt_io.load_model(path)
    shape = tuple(ck["input_shape"])
    info = export_onnx(model, out, input_shape=shape, opset=opset, metadata=checkpoint_metadata(ck))
    images = _parity_images(ck, shape)
    parity = check_parity(model, out, images, batch_sizes=(1, 17))
    info["max_abs_diff"] = parity["max_abs_diff"]
    console.print(f"wrote {out} (opset {opset}, dynamic batch); max |PyTorch - ONNX| = {parity['max_abs_diff']:.2e} "
                  f"on {len(images)} {'test images' if ck.get('dataset') else 'random inputs'}")
    info.update(parity_scale=parity["scale"], parity_tolerance=max_abs_diff + rtol * parity["scale"])
    _parity_verdict(parity, out, "the checkpoint", max_abs_diff, rtol)
    return info


def _parity_verdict(parity: dict, out: Path, what: str, atol: float, rtol: float) -> None:
    limit = atol + rtol * parity["scale"]
    if parity["max_abs_diff"] > limit:
        raise GateFailure(f"gate max_abs_diff failed: {parity['max_abs_diff']:.3g} > {limit:.3g} ({atol:g} + {rtol:g} x "
                          f"largest |logit| {parity['scale']:.3g}); {out} does not compute what {what} does")


def _export_model_file(path: Path, teacher: LoadedModel, out: Path, *, opset: int, max_abs_diff: float, rtol: float,
                       shape) -> dict:
    shape = shape or teacher.native_shape
    if shape is None:
        raise UserError(f"{path}: the file does not record its input shape; give --input-shape C,H,W")
    meta = {"compressor.arch": teacher.arch, "compressor.kind": "model", "compressor.source": teacher.source,
            "compressor.input_shape": json.dumps(list(shape))}
    info = export_onnx(teacher.model, out, input_shape=shape, opset=opset, metadata=meta)
    images = torch.randn(PARITY_IMAGES, *shape, generator=torch.Generator().manual_seed(0))
    parity = check_parity(teacher.model, out, images, batch_sizes=(1, 17))
    info["max_abs_diff"] = parity["max_abs_diff"]
    console.print(f"wrote {out} (opset {opset}, dynamic batch) from {teacher.source} {path}; "
                  f"max |PyTorch - ONNX| = {parity['max_abs_diff']:.2e} on {len(images)} random inputs")
    info.update(parity_scale=parity["scale"], parity_tolerance=max_abs_diff + rtol * parity["scale"])
    _parity_verdict(parity, out, str(path), max_abs_diff, rtol)
    return info


def _parity_images(ck: dict, shape) -> torch.Tensor:
    """Real test images of the checkpoint's dataset when they are at hand, else seeded random inputs."""
    try:
        data = load_data(DataConfig(name=ck.get("dataset", ""), limit_test=PARITY_IMAGES, val_fraction=0.0), 0)
        if data.input_shape == shape:
            return data.normalize(torch.device("cpu"))(data.test.take(torch.arange(len(data.test))).images).contiguous()
    except (UserError, ValueError):  # another dataset, or not on this machine
        pass
    return torch.randn(PARITY_IMAGES, *shape, generator=torch.Generator().manual_seed(0))
