"""onnxruntime sessions: validate a model file, open it on the right provider, predict, and prove it is a
classifier of the data.

Everything the report states about a measurement (provider, threads, graph optimisation level) is recorded on
the `Session` when it is created, so the numbers and their conditions cannot drift apart.

    session = create_session("student.onnx", threads=4)
    logits = onnx_predict(session, test_images)                                 # (N, classes)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from compressor.core.errors import UserError, first_line

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# What onnxruntime raises when it cannot load a model (none of these derive from RuntimeError).
_ORT_LOAD_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NotImplemented,
    ort_state.NoSuchFile,
    ort_state.EPFail,
    ort_state.RuntimeException,
)


def image_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are fed at run time (older exporters also list every weight as an input)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                 "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool"}


def is_quantized(model: onnx.ModelProto) -> bool:
    """Whether the graph computes in int8 (QDQ pairs or QOperator ops), as export.int8 and onnxruntime make it."""
    return any(node.op_type in QUANTIZED_OPS for node in model.graph.node)


def check_onnx_file(path: str | os.PathLike) -> onnx.ModelProto:
    """Validate a user-given ONNX classifier before onnxruntime sees it (its errors are long C++ messages).

    Checks: the file exists and reads, parses as ONNX, passes `onnx.checker`, has exactly one float input
    of rank 4 (N, C, H, W) and exactly one output. Raises UserError naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        model = onnx.load_model(path, format="protobuf")  # also loads any external-data side file
        onnx.checker.check_model(model)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    except DecodeError:
        raise UserError(f"{path}: not an ONNX file (it does not parse; truncated, or another format?)") from None
    except (onnx.checker.ValidationError, ValueError) as e:
        raise UserError(f"{path}: not a valid ONNX model ({first_line(e)})") from None

    inputs = image_inputs(model)
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise UserError(
            f"{path}: an image classifier needs exactly one input and one output "
            f"(this model has {len(inputs)} inputs and {len(model.graph.output)} outputs)"
        )
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT or len(tensor.shape.dim) != 4:
        dtype = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise UserError(
            f"{path}: input '{inputs[0].name}' must be a float tensor (N, C, H, W), "
            f"not {dtype} of rank {len(tensor.shape.dim)}"
        )
    return model


def _available_cpus() -> int:
    """CPUs this process may run on (respects taskset and cpuset limits, unlike os.cpu_count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class Session:
    """An onnxruntime session plus the conditions every measurement made with it must report."""

    inner: ort.InferenceSession
    path: Path
    provider: str  # the provider that actually runs the graph, after any fallback
    threads: int  # intra-op threads
    graph_optimization: str  # onnxruntime's graph optimisation level: "all", what a deployment runs
    input_name: str
    output_name: str
    fixed_batch: int | None = None  # the batch size the file was exported with, if it is not dynamic

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 -> (B, classes) logits."""
        return self.inner.run([self.output_name], {self.input_name: batch})[0]


def require_provider(device: str) -> None:
    """Refuse `device: cuda` when onnxruntime has no CUDA provider. `compress distill` calls it before any work
    (else it would train, then fail at verification, which opens its sessions on the recipe's device);
    create_session calls it for every session."""
    if device == "cuda" and CUDA not in ort.get_available_providers():
        raise UserError("device: cuda: onnxruntime has no CUDAExecutionProvider, so models cannot run on the GPU "
                        "under onnxruntime; install onnxruntime-gpu in place of onnxruntime, or use --device auto "
                        "(torch still trains on the GPU; onnxruntime runs on the CPU)")


def create_session(
    path: str | os.PathLike,
    *,
    threads: int | None = None,
    device: str = "auto",
) -> Session:
    """Validate `path` and open it with CUDA when available and `device` allows it, else on CPU.

    `threads=None` means one intra-op thread per available CPU. It is set explicitly rather than left
    to onnxruntime's default because the session cannot report what its default turned out to be.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"device: must be auto, cpu or cuda (got {device!r})")
    require_provider(device)
    has_cuda = CUDA in ort.get_available_providers()
    check_onnx_file(path)

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # what a deployment runs
    options.intra_op_num_threads = threads or _available_cpus()
    options.log_severity_level = 3  # errors only: warnings about unused initializers are noise to a user
    # TF32 off on CUDA, as PyTorch's evaluation has it: TF32 rounds convolution inputs to 10-bit mantissas and
    # flips near-tied images, so the ONNX and PyTorch accuracies would disagree for no fault of the export
    providers = [(CUDA, {"use_tf32": 0}), CPU] if has_cuda and device != "cpu" else [CPU]
    try:
        inner = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except _ORT_LOAD_ERRORS as e:
        raise UserError(f"{path}: onnxruntime cannot load this model ({first_line(e)})") from None
    provider = inner.get_providers()[0]
    if device == "cuda" and provider != CUDA:  # CUDA libraries missing: onnxruntime fell back to CPU
        raise UserError(f"{path}: onnxruntime could not start CUDAExecutionProvider (check CUDA/cuDNN libraries)")
    return Session(
        inner=inner,
        path=Path(path),
        provider=provider,
        threads=options.intra_op_num_threads,
        graph_optimization="all",
        input_name=inner.get_inputs()[0].name,
        output_name=inner.get_outputs()[0].name,
        fixed_batch=_fixed(inner.get_inputs()[0].shape[0]),
    )


def _fixed(dim) -> int | None:
    """An ONNX dimension that is a positive number (not a symbol, not unknown)."""
    return dim if isinstance(dim, int) and dim > 0 else None


def as_float32(images) -> np.ndarray:
    """A torch tensor (any device) or array -> contiguous float32 numpy array."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    return np.ascontiguousarray(images, dtype=np.float32)


def onnx_predict(session: Session, images, batch_size: int = 256) -> np.ndarray:
    """(N, C, H, W) normalised images -> (N, classes) logits, run in chunks of `batch_size` (of the model's own
    batch size when it has a fixed one: the last chunk is padded with zeros and the padding's rows dropped)."""
    images = as_float32(images)
    b = session.fixed_batch or batch_size
    out = []
    for i in range(0, len(images), b):
        chunk = images[i : i + b]
        if session.fixed_batch and len(chunk) < b:
            pad = np.zeros((b - len(chunk), *chunk.shape[1:]), dtype=np.float32)
            out.append(session.run(np.concatenate([chunk, pad]))[: len(chunk)])
        else:
            out.append(session.run(chunk))
    return np.concatenate(out)


def probe_classifier(session: Session, input_shape: tuple[int, int, int], num_classes: int,
                     batch_sizes: Iterable[int]) -> dict:
    """Prove `session` is an image classifier for this data, and find which of `batch_sizes` it runs at.

    A model someone else exported may have a fixed batch (torchvision's default export: 1), an image size or a
    class count other than the data's, or fail only when run. Returns {"accepted": [...], "refused":
    {batch: why}}; raises UserError (one line) when the model cannot be used at all.
    """
    name = session.path
    dims = session.inner.get_inputs()[0].shape  # [N, C, H, W], entries numbers or symbols
    for dim, want in zip(dims[1:], input_shape):
        if _fixed(dim) and dim != want:
            raise UserError(f"{name}: takes inputs of shape {tuple(_fixed(d) or '?' for d in dims[1:])} "
                            f"(C, H, W); the recipe's data has {tuple(input_shape)}")
    out_dims = session.inner.get_outputs()[0].shape
    if out_dims and len(out_dims) != 2:
        raise UserError(f"{name}: output '{session.output_name}' has rank {len(out_dims)}; a classifier returns "
                        "(N, classes) logits")
    if out_dims and _fixed(out_dims[1]) and out_dims[1] != num_classes:
        raise UserError(f"{name}: outputs {out_dims[1]} classes; the recipe's data has {num_classes}")
    rng = np.random.default_rng(0)
    accepted, refused = [], {}
    for b in sorted(set(batch_sizes)):
        if session.fixed_batch and b != session.fixed_batch:
            refused[str(b)] = f"the model has a fixed batch size of {session.fixed_batch}"
            continue
        try:
            y = session.run(rng.standard_normal((b, *input_shape), dtype=np.float32))
        except (*_ORT_LOAD_ERRORS, RuntimeError, ValueError) as e:
            refused[str(b)] = f"onnxruntime cannot run it ({first_line(e)})"
            continue
        if y.ndim != 2 or y.shape[1] != num_classes:
            raise UserError(f"{name}: returns an output of shape {tuple(y.shape)} for a batch of {b}; a classifier "
                            f"of the recipe's data returns ({b}, {num_classes})")
        if y.shape[0] != b:
            refused[str(b)] = f"it returns {y.shape[0]} rows for a batch of {b}"
            continue
        accepted.append(b)
    if not accepted:
        first = next(iter(refused.items()))
        raise UserError(f"{name}: cannot be run on ({first[0]}, {', '.join(map(str, input_shape))}) inputs: {first[1]}")
    return {"accepted": accepted, "refused": refused}


