"""The onnxruntime side: validate a model file, open it, predict, time it, quantise it to int8.

Everything the report states about a measurement (provider, threads, graph optimisation level) is
recorded on the `Session` when it is created, so the numbers and their conditions cannot drift apart.

    session = create_session("student.onnx", threads=4)
    acc = onnx_accuracy(session, test_images, test_labels)                      # top-1, percent
    lat = measure_latency(session, [1, 64], (1, 28, 28))                        # {"1": {p50_ms, ...}, ...}
    quantize_int8("student.onnx", "student.int8.onnx", train_images[:512])
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from compressor.core.errors import UserError
from compressor.core.errors import first_line
from compressor.core.fileio import atomic_path

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
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


def _image_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are fed at run time (older exporters also list every weight as an input)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


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

    inputs = _image_inputs(model)
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
    graph_optimization: str  # a key of OPTIMIZATION_LEVELS
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
    optimization: str = "all",
) -> Session:
    """Validate `path` and open it with CUDA when available and `device` allows it, else on CPU.

    `threads=None` means one intra-op thread per available CPU. It is set explicitly rather than left
    to onnxruntime's default because the session cannot report what its default turned out to be.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"device: must be auto, cpu or cuda (got {device!r})")
    if optimization not in OPTIMIZATION_LEVELS:
        raise UserError(f"optimization: must be one of {', '.join(OPTIMIZATION_LEVELS)} (got {optimization!r})")
    require_provider(device)
    has_cuda = CUDA in ort.get_available_providers()
    check_onnx_file(path)

    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
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
        graph_optimization=optimization,
        input_name=inner.get_inputs()[0].name,
        output_name=inner.get_outputs()[0].name,
        fixed_batch=_fixed(inner.get_inputs()[0].shape[0]),
    )


def _fixed(dim) -> int | None:
    """An ONNX dimension that is a positive number (not a symbol, not unknown)."""
    return dim if isinstance(dim, int) and dim > 0 else None


def _as_float32(images) -> np.ndarray:
    """A torch tensor (any device) or array -> contiguous float32 numpy array."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    return np.ascontiguousarray(images, dtype=np.float32)


def onnx_predict(session: Session, images, batch_size: int = 256) -> np.ndarray:
    """(N, C, H, W) normalised images -> (N, classes) logits, run in chunks of `batch_size` (of the model's own
    batch size when it has a fixed one: the last chunk is padded with zeros and the padding's rows dropped)."""
    images = _as_float32(images)
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
    for axis, (dim, want) in enumerate(zip(dims[1:], input_shape)):
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


def onnx_accuracy(session: Session, images, labels, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent."""
    predicted = onnx_predict(session, images, batch_size).argmax(axis=1)  # (N,)
    labels = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    return float(100.0 * (predicted == labels).mean())


def _runner(session: Session, batch: np.ndarray) -> Callable[[], object]:
    """A zero-argument call that runs the model once on `batch`, as the provider is meant to be used.

    On CUDA the input is copied to the GPU once and the output stays there (IO binding), so the timing
    is the model and not host<->device copies; synchronize_outputs makes each call wait for the GPU.
    """
    if session.provider != CUDA:
        feed = {session.input_name: batch}
        return lambda: session.inner.run([session.output_name], feed)
    binding = session.inner.io_binding()
    binding.bind_ortvalue_input(session.input_name, ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))
    binding.bind_output(session.output_name, "cuda", 0)

    def run() -> None:
        session.inner.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return run


def measure_latency(
    session: Session,
    batch_sizes: Iterable[int],
    input_shape: tuple[int, int, int],
    *,
    warmup: int = 10,  # first runs allocate memory and pick kernels; they are not the steady state
    min_runs: int = 100,  # enough for a stable p99
    min_seconds: float = 1.0,  # and long enough to span scheduler and frequency noise
    seed: int = 0,
    rounds: int = 1,
) -> dict[str, dict]:
    """Time one forward pass per batch size; returns {"<batch>": {p50_ms, p90_ms, p99_ms, mean_ms, ...}}.

    Inputs are fixed seeded random images of `input_shape` (C, H, W): a CNN's cost does not depend on
    pixel values, and a fixed input makes runs comparable. Each run is timed alone with perf_counter,
    so percentiles are of single calls. Throughput (images/s) is derived from the median.
    """
    return measure_latencies({"model": session}, batch_sizes, input_shape, warmup=warmup, min_runs=min_runs,
                             min_seconds=min_seconds, seed=seed, rounds=rounds)["model"]


def measure_latencies(
    sessions: dict[str, Session],
    batch_sizes: Iterable[int],
    input_shape: tuple[int, int, int],
    *,
    warmup: int = 10,
    min_runs: int = 100,
    min_seconds: float = 1.0,
    seed: int = 0,
    rounds: int = 5,
) -> dict[str, dict[str, dict]]:
    """Time several models in alternating rounds: {role: {"<batch>": stats}}, stats as `measure_latency`'s plus
    `round_p50_ms` (the median of each round).

    Timing one model entirely before the other lets clock drift, turbo and neighbours bias their ratio; in
    rounds (A B, B A, A B, ...) both meet the same conditions, and the rounds' spread is the ratio's interval
    (`speedups`). Each model gets `min_runs` calls and `min_seconds` per batch size in all, split over the rounds.
    """
    rng = np.random.default_rng(seed)
    roles = list(sessions)
    per_round_runs = max(1, -(-min_runs // rounds))
    per_round_seconds = min_seconds / rounds
    results: dict[str, dict[str, dict]] = {role: {} for role in roles}
    for b in batch_sizes:
        batch = rng.standard_normal((b, *input_shape), dtype=np.float32)  # (B, C, H, W)
        runners = {role: _runner(sessions[role], batch) for role in roles}
        for run in runners.values():
            for _ in range(warmup):
                run()
        times: dict[str, list[float]] = {role: [] for role in roles}
        medians: dict[str, list[float]] = {role: [] for role in roles}
        for r in range(rounds):
            for role in roles if r % 2 == 0 else roles[::-1]:
                run, got = runners[role], []
                run()  # one untimed call: the other model ran last and left its data in the caches
                start = time.perf_counter()
                while len(got) < per_round_runs or time.perf_counter() - start < per_round_seconds:
                    t0 = time.perf_counter()
                    run()
                    got.append(time.perf_counter() - t0)
                times[role] += got
                medians[role].append(float(np.median(got) * 1000.0))
        for role in roles:
            results[role][str(b)] = {**_stats(np.array(times[role]) * 1000.0, b), "round_p50_ms": medians[role]}
    return results


def _stats(ms: np.ndarray, b: int) -> dict:
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": float(ms.mean()),
        "stdev_ms": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        "min_ms": float(ms.min()),
        "runs": len(ms),
        "throughput": float(b / (p50 / 1000.0)),
    }


def speedups(slow: dict[str, dict], fast: dict[str, dict]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """`slow`'s p50 over `fast`'s per batch size, and its interval: the lowest and highest ratio of one round's
    medians (both measured by `measure_latencies` in the same rounds)."""
    ratio, interval = {}, {}
    for b in fast:
        if b not in slow:
            continue
        ratio[b] = slow[b]["p50_ms"] / fast[b]["p50_ms"]
        rounds = [t / s for t, s in zip(slow[b].get("round_p50_ms", []), fast[b].get("round_p50_ms", []))]
        interval[b] = [min(rounds), max(rounds)] if rounds else [ratio[b], ratio[b]]
    return ratio, interval


def latency_meta(session: Session) -> dict:
    """The conditions of a latency measurement, for the report next to the numbers."""
    return {
        "provider": session.provider,
        "threads": session.threads,
        "graph_optimization": session.graph_optimization,
        "io_binding": session.provider == CUDA,
        "onnxruntime": ort.__version__,
    }


class _ImageReader(CalibrationDataReader):
    """Feeds calibration images to the quantiser in batches (the exported model has a dynamic batch axis)."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int = 64):
        self._batches = iter([{input_name: images[i : i + batch_size]} for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


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


def cpu_has_vnni() -> bool:
    """AVX512-VNNI or AVX-VNNI, as PyTorch's CPU probe reports (where onnxruntime's u8s8 kernels cannot saturate)."""
    import torch

    probe = getattr(getattr(torch, "cpu", None), "_is_vnni_supported", None)
    if probe is not None:
        return bool(probe())
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


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
    images = _as_float32(calibration_images)  # (N, C, H, W)
    input_name = _image_inputs(fp32)[0].name
    with tempfile.TemporaryDirectory(prefix="compressor-quant-") as work, _quiet_root_logger():
        prepared, quantized = Path(work) / "prepared.onnx", Path(work) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared),
            str(quantized),
            _ImageReader(input_name, images),
            quant_format=formats[quant_format],
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
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
        "calibration_images": len(images),
        "bytes": Path(out_path).stat().st_size,
    }
