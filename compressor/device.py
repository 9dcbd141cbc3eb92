"""Device and precision choices, made once per run and recorded in the report."""

from __future__ import annotations

import contextlib
import os
import platform
import random

import torch

from .errors import UserError


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


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """auto = bf16 on a CUDA device that supports it, fp16 on one that does not, nothing on the CPU.

    On the CPU bf16 is opt-in (`train.amp: bf16`): it is faster on AVX512-BF16 machines but its accuracy effect
    on these small models has not been measured.
    """
    if setting == "off":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


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
