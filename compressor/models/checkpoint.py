"""Self-describing checkpoints: everything needed to rebuild the model, loadable with weights_only=True.

A checkpoint is a plain dict of tensors, strings, numbers and lists, so `torch.load(..., weights_only=True)`
reads it without unpickling any code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.core.errors import UserError, first_line
from compressor.core.fileio import atomic_path
from compressor.models import create_model

FORMAT = "compressor.checkpoint/1"


def model_checkpoint(
    model: nn.Module,
    *,
    arch: str,
    classes: list[str],
    input_shape: tuple[int, int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    **extra: Any,
) -> dict:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {
        "format": FORMAT,
        "arch": arch,
        "num_classes": len(classes),
        "classes": list(classes),
        "input_shape": list(input_shape),
        "mean": list(mean),
        "std": list(std),
        "state_dict": state,
        **extra,
    }


def save(obj: dict, path: str | Path) -> None:
    # through a Python file object, so a full disk raises OSError(ENOSPC) for atomic_path to report; torch's
    # zip writer may still wrap it in a RuntimeError while closing the archive, so unwrap that
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as e:
            cause = e.__context__ or e.__cause__
            while cause is not None and not isinstance(cause, OSError):
                cause = cause.__context__ or cause.__cause__
            if cause is None:
                raise
            raise cause from None


def load_trusted_dict(path: str | Path) -> Any:
    """`torch.load(weights_only=True)` with every failure turned into one clear line."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: file not found")
    if p.is_dir():
        raise UserError(f"{p}: is a directory, not a checkpoint")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise UserError(
                f"{p}: holds pickled Python objects (a whole nn.Module or custom classes), which could run code "
                "when loaded; re-save a state_dict, or pass --trust-teacher if you trust this file"
            ) from None
        raise UserError(f"{p}: not a PyTorch checkpoint ({first_line(e)})") from None
    except Exception as e:  # untrusted bytes fail in many ways (KeyError, struct.error, ...): all mean the same
        first = first_line(e)
        raise UserError(f"{p}: not a readable PyTorch checkpoint (truncated or another format: {first})") from None


def pruned_name(arch: str) -> str:
    """What a student pruned from `arch` is called (report, ONNX metadata, teacher.arch of a re-used student)."""
    return f"{arch}-pruned"


def reported_arch(ckpt: dict) -> str:
    """A checkpoint's architecture as distill reports it: `<arch>-pruned` for a pruned student."""
    return pruned_name(ckpt["arch"]) if ckpt.get("pruned") is not None else ckpt["arch"]


def is_compressor_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a model from a compressor checkpoint; returns (model in eval mode, checkpoint metadata)."""
    ckpt = load_trusted_dict(path)
    if not is_compressor_checkpoint(ckpt):
        raise UserError(f"{path}: not a compressor checkpoint (written by `compress train` or `compress distill`)")
    return model_from_checkpoint(ckpt, path), ckpt


def model_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> nn.Module:
    """The checkpoint's architecture with its weights; a pruned student (`pruned`: its channel plan) is the
    architecture shrunk to that plan first, then loaded strictly, so every tensor's shape is checked."""
    if ckpt.get("pruned") is not None:
        from compressor.models.plan import model_from_plan

        try:
            model = model_from_plan(ckpt["arch"], ckpt["pruned"], ckpt["state_dict"], ckpt["num_classes"],
                                    ckpt["input_shape"][0])
        except (RuntimeError, ValueError) as e:
            raise UserError(f"{path}: weights do not fit {ckpt['arch']} pruned to its channel plan "
                            f"({first_line(e)})") from None
        return model.eval()
    model = create_model(ckpt["arch"], ckpt["num_classes"], ckpt["input_shape"][0])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit {ckpt['arch']} ({first_line(e)})") from None
    return model.eval()
