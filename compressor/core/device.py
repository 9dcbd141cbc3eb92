"""Device and precision choices, made once per run and recorded in the report."""

from __future__ import annotations

import contextlib
import os
import platform
import random

import torch

from compressor.core.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for but no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def memory_format(channels_last: bool) -> torch.memory_format:
    """The memory format of `train.channels_last`, for the models and the batches alike."""
    return torch.channels_last if channels_last else torch.contiguous_format


def channels_last_safe(model: torch.nn.Module) -> bool:
    """Whether the model may train channels_last on the CPU: every convolution takes and gives a multiple of 8
    channels (or takes the 1-3 channels of an image). PyTorch 2.14's CPU backward of a 1x1 stride-2 convolution in
    channels_last crashes the process (SIGSEGV) for 12-15 input channels at some batch sizes (115, 117; not 64 or
    128), which a pruned student's odd widths (15/31/63) hit on a last partial batch; NCHW computes them fine."""
    return all((m.in_channels <= 3 or m.in_channels % 8 == 0) and m.out_channels % 8 == 0
               for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def cpu_native_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, as PyTorch sees it (its own CPU feature probe, not the CPU's name):
    AVX512-BF16 (Zen 4 and later, Cooper Lake / Sapphire Rapids and later) or AMX tiles. Without either, oneDNN
    emulates bf16 and a step ran ~10x slower than fp32 (measured on an AVX2 machine); with AVX512-BF16 it ran 1.8x
    faster (docs/BENCHMARKS.md). COMPRESSOR_CPU_BF16=1 / 0 overrides the answer (tests force both paths)."""
    forced = os.environ.get("COMPRESSOR_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1", f"COMPRESSOR_CPU_BF16={forced}"
    if _cpu_probe("avx512_bf16"):
        return True, "the CPU has AVX512-BF16 (PyTorch's CPU probe): bf16 runs natively"
    if _cpu_probe("amx_tile"):
        return True, "the CPU has AMX tiles (PyTorch's CPU probe): bf16 runs natively"
    return False, "the CPU has neither AVX512-BF16 nor AMX (PyTorch's CPU probe): bf16 would be emulated, fp32 is faster"


def cpu_has_vnni() -> bool:
    """AVX512-VNNI, as PyTorch's CPU probe reports: int8 products that onnxruntime's u8s8 kernels compute without
    saturating (export.int8 keeps 8-bit weights there, 7-bit elsewhere). PyTorch 2.14's probe does not look for
    AVX-VNNI (Alder Lake and later): such a CPU gets 7-bit weights, the safe side."""
    return _cpu_probe("vnni")


def _cpu_probe(feature: str) -> bool:
    """PyTorch's own CPU feature probe, `torch.cpu._is_<feature>_supported()` (False where it has none)."""
    return bool(getattr(torch.cpu, f"_is_{feature}_supported", lambda: False)())


def amp_choice(setting: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """`train.amp` -> the autocast dtype of training steps (None: fp32) and why. auto = bf16 on a CUDA device that
    supports it (fp16 on one that does not), and on a CPU that computes bf16 natively (`cpu_native_bf16`); fp32 on
    other CPUs. Evaluation, export, parity and the reported accuracies are fp32 whatever this says."""
    if setting == "off":
        return None, "train.amp: off"
    if setting in ("bf16", "fp16"):
        return (torch.bfloat16 if setting == "bf16" else torch.float16), f"train.amp: {setting}"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: the GPU supports bf16"
        return torch.float16, "auto: the GPU does not support bf16, fp16 with loss scaling"
    native, why = cpu_native_bf16()
    return (torch.bfloat16 if native else None), f"auto: {why}"


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The dtype of `amp_choice` alone."""
    return amp_choice(setting, device)[0]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is a dependency; this only guards odd installs
        pass


def environment(device: torch.device) -> dict:
    import onnx
    import onnxruntime

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info
