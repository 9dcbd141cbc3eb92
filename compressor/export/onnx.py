"""Export a PyTorch classifier to one self-contained ONNX file, and prove the file computes the same thing.

Exporter choice: the dynamo exporter (`torch.onnx.export(..., dynamo=True)`, built on `torch.export`).
It is the default and the maintained path in torch 2.14; the TorchScript exporter is deprecated and
warns on every call. The dynamo path emits opset 18 natively, expresses the dynamic batch axis as a
checked `torch.export.Dim` (an export that would silently bake in the batch size fails instead), and
its optimiser folds BatchNorm into the preceding Conv. There is deliberately no TorchScript fallback:
two exporters would give two different graphs for the same model, and a model that `torch.export`
rejects (data-dependent Python control flow) is reported to the user as such.

We never give the exporter a file name: it returns an `ONNXProgram` whose `model_proto` holds every
weight inline, and we serialise that proto ourselves. The exporter's `.onnx.data` side file therefore
never exists, and the single file is written atomically. (Protobuf caps one file at 2 GB, far above
any CNN this tool distils.)

    info = export_onnx(model, "student.onnx", input_shape=(1, 28, 28), metadata={"arch": "wrn-16-1"})
    parity = check_parity(model, "student.onnx", test_images[:256])   # the caller applies the tolerance
"""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path

import numpy as np
import onnx
import torch

from compressor.core.errors import UserError, first_line
from compressor.core.fileio import atomic_path
from compressor.export.sessions import create_session, onnx_predict

INPUT_NAME, OUTPUT_NAME = "input", "logits"  # what a deployment feeds and reads
EXPORTER = f"torch.onnx dynamo (torch {torch.__version__.split('+')[0]})"


def _reuse_torchlib_registry() -> bool:
    """Build torch.onnx's table of ATen-to-ONNX translations once per process, not once per export.

    The dynamo exporter rebuilds it from torchlib (~500 onnxscript functions) on every call: 1.1 s of a 3.6 s
    export of a WRN-16-1 on the 2-core AMD machine, paid again for every candidate a latency search exports and
    for every run of an ablation. Each export still gets a registry of its own (a new dict of new lists), so a
    caller's `custom_translation_table`, added to that copy, cannot leak into the next export. The graph is the
    same as without the cache (tests/test_export_runtime.py compares the bytes). The hook is torch-private; on a
    torch without it the exporter runs as shipped.
    """
    try:
        from torch.onnx._internal.exporter import _registration

        registry_class = _registration.ONNXRegistry
        build = registry_class.__dict__["from_torchlib"].__func__
    except (ImportError, AttributeError, KeyError):
        return False
    if getattr(build, "_compressor_cached", False):
        return True
    built: dict = {}
    lock = threading.Lock()

    def from_torchlib(cls, *args, **kwargs):
        key = (cls, args, tuple(sorted(kwargs.items())))
        with lock:
            if key not in built:
                built[key] = build(cls, *args, **kwargs)
        base = built[key]
        registry = copy.copy(base)
        registry.functions = {target: list(metas) for target, metas in base.functions.items()}
        return registry

    from_torchlib._compressor_cached = True  # type: ignore[attr-defined]
    from_torchlib.uncached = build  # type: ignore[attr-defined]
    registry_class.from_torchlib = classmethod(from_torchlib)
    return True


REGISTRY_REUSED = _reuse_torchlib_registry()


def _cpu_eval_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy in eval mode, fp32, on CPU, contiguous: the caller's model (maybe training, on CUDA) is untouched."""
    return copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format).eval()


def _root_cause(e: BaseException) -> str:
    """First line of the innermost cause: the exporter's own message is a generic 'step 1/3 failed' banner."""
    while e.__cause__ is not None:
        e = e.__cause__
    return first_line(e)


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    input_shape: tuple[int, int, int],
    opset: int = 18,
    metadata: dict[str, str] | None = None,
) -> dict:
    """Export `model` ((N, C, H, W) -> (N, classes)) with a dynamic batch axis to one file at `path`.

    `metadata` (class names as JSON, mean/std, arch, ...) goes into the model's metadata_props so the
    file describes itself. Raises UserError with a one-line reason if the model cannot be exported;
    on any failure nothing is written and an existing file at `path` is left as it was.
    """
    path = Path(path)
    name = type(model).__name__
    # Batch 2, not 1: torch.export specialises a dimension whose example size is 0 or 1.
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))  # (2, C, H, W)
    try:
        program = torch.onnx.export(
            _cpu_eval_copy(model),
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
        proto = program.model_proto  # weights inline: nothing is written to disk yet
    except Exception as e:
        raise UserError(f"cannot export {name} to ONNX: {_root_cause(e)}") from e

    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise UserError(
            f"cannot export {name} to ONNX: a classifier takes one image tensor and returns one logits "
            f"tensor (this one has {len(graph.input)} inputs and {len(graph.output)} outputs)"
        )
    got_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got_opset != opset:
        raise UserError(f"cannot export {name} to ONNX: asked for opset {opset}, the exporter produced {got_opset}")

    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise UserError(f"cannot export {name} to ONNX: the exported graph is invalid: {_root_cause(e)}") from e

    with atomic_path(path) as tmp:
        onnx.save_model(proto, tmp, format="protobuf")
    return {
        "path": str(path),
        "opset": opset,
        "dynamic_batch": True,
        "exporter": EXPORTER,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "bytes": path.stat().st_size,
    }


def check_parity(
    model: torch.nn.Module,
    onnx_path: str | os.PathLike,
    images: torch.Tensor,
    *,
    batch_sizes: tuple[int, ...] = (1, 17),
    session=None,
) -> dict:
    """Run onnxruntime on real images in chunks of each batch size and compare with PyTorch on the same images.

    `images` are normalised (N, C, H, W) floats with N >= max(batch_sizes). Both sides run fp32 on CPU
    (unless a `session` is passed), so a difference is the export's fault, not TF32 or a GPU kernel's.
    Several batch sizes because a wrongly baked-in batch dimension only shows at a size other than
    the example's. Returns the differences; the caller decides the tolerance.

    PyTorch's answer is computed once, in chunks of the largest batch size, and each ONNX batch size is held to
    it: what is in question is the file's batch axis, and an eval-mode classifier's logits for an image do not
    depend on the other images in its batch. (Kernels chosen per batch size round differently: PyTorch at batch 1
    against batch 17 measured 5e-7 to 1.6e-6 of the largest |logit| on WRN-16-1, MobileNetV3, EfficientNet-B0 and
    ResNet-18, inside the gate's 1e-4 + 1e-5 x that.) PyTorch at batch 1 as well was most of this check's time:
    68 eager forward passes for each of teacher and student.
    """
    if len(images) < max(batch_sizes):
        raise ValueError(f"check_parity needs at least {max(batch_sizes)} images, got {len(images)}")
    reference = _cpu_eval_copy(model)
    session = session or create_session(onnx_path, device="cpu")
    images = images.detach().float().cpu().contiguous()  # (N, C, H, W)

    if session.fixed_batch:  # a file exported with a fixed batch runs at that size only
        batch_sizes = (session.fixed_batch,)
    with torch.no_grad():
        expected = torch.cat([reference(chunk) for chunk in images.split(max(batch_sizes))]).numpy()  # (N, classes)
    per_batch: dict[str, float] = {}
    agree, total, scale = 0, 0, 0.0
    for b in batch_sizes:
        actual = onnx_predict(session, images, batch_size=b)  # (N, classes)
        if actual.shape != expected.shape:
            raise UserError(f"{onnx_path}: returns logits of shape {actual.shape[1:]} per batch; the model it is "
                            f"checked against returns {expected.shape[1:]}")
        per_batch[str(b)] = float(np.abs(expected - actual).max())
        scale = max(scale, float(np.abs(expected).max()))
        agree += int((expected.argmax(1) == actual.argmax(1)).sum())
        total += len(images)
    # scale: the largest |logit|, for a tolerance relative to it (fp32 rounding grows with the values)
    return {"max_abs_diff": max(per_batch.values()), "per_batch": per_batch, "argmax_agree": agree / total,
            "scale": scale, "images": len(images)}
