"""Loading a teacher the user already has, and checking that it fits the recipe's data.

Formats: a compressor checkpoint (from `compress train`), or a plain `state_dict` (also wrapped as
`{"state_dict": ...}` or `{"model": ...}`) of the recipe's `teacher.arch`. Nothing is unpickled with
`weights_only=False` unless the user passes `--trust-teacher`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import checkpoint as ckpt_io
from .datasets import DataBundle
from .errors import UserError
from .models import create_model


@dataclass
class Teacher:
    model: nn.Module
    arch: str
    source: str  # "compressor checkpoint", "state_dict", "pickled module"
    classes: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_shape: tuple[int, ...] | None = None


def _unwrap_state_dict(obj) -> dict | None:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        if obj and all(isinstance(k, str) for k in obj) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    return None


def load_teacher(path: str | Path, arch: str, data: DataBundle, *, trust: bool = False) -> Teacher:
    path = Path(path)
    if trust:
        obj = _load_pickled(path)
    else:
        obj = ckpt_io.load_trusted_dict(path)
    if isinstance(obj, nn.Module):
        teacher = Teacher(obj.eval(), getattr(obj, "arch", type(obj).__name__), "pickled module")
    elif ckpt_io.is_compressor_checkpoint(obj):
        model = ckpt_io.model_from_checkpoint(obj, path)
        teacher = Teacher(
            model, obj["arch"], "compressor checkpoint", list(obj["classes"]), tuple(obj["mean"]), tuple(obj["std"]),
            tuple(obj["input_shape"]),
        )
    else:
        state = _unwrap_state_dict(obj)
        if state is None:
            raise UserError(
                f"{path}: neither a compressor checkpoint nor a state_dict (a mapping of parameter names to tensors)"
            )
        model = create_model(arch, data.num_classes, data.input_shape[0])
        missing, unexpected = _fit_state(model, state)
        if missing or unexpected:
            detail = []
            if missing:
                detail.append(f"missing {len(missing)} (e.g. {missing[0]})")
            if unexpected:
                detail.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
            raise UserError(f"{path}: weights do not fit teacher.arch={arch}: {'; '.join(detail)}")
        teacher = Teacher(model.eval(), arch, "state_dict")
    check_fits_data(teacher, data, path)
    return teacher


def _fit_state(model: nn.Module, state: dict) -> tuple[list[str], list[str]]:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        return missing, unexpected
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        k = wrong[0]
        raise UserError(f"weights do not fit: {k} has shape {tuple(state[k].shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict(state)
    return [], []


def _load_pickled(path: Path):
    """The one place that unpickles arbitrary objects: only reached with --trust-teacher."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)  # --trust-teacher only
    except Exception as e:  # a trusted file can still be corrupt; any failure is the user's file
        raise UserError(f"{path}: cannot load ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def check_fits_data(teacher: Teacher, data: DataBundle, path: Path) -> None:
    """The teacher's class count, input channels and normalisation must be those of the recipe's data."""
    problems = []
    c, h, w = data.input_shape
    if teacher.classes is not None and len(teacher.classes) != data.num_classes:
        problems.append(f"{path}: the teacher has {len(teacher.classes)} classes, the data has {data.num_classes}")
    if teacher.input_shape is not None and teacher.input_shape[0] != c:
        problems.append(f"{path}: the teacher takes {teacher.input_shape[0]} input channels, the data has {c}")
    if teacher.mean is not None and (
        len(teacher.mean) != len(data.mean)
        or any(abs(a - b) > 1e-3 for a, b in zip(teacher.mean + teacher.std, data.mean + data.std))
    ):
        problems.append(
            f"{path}: the teacher was trained with normalisation mean={list(teacher.mean)} std={list(teacher.std)}, "
            f"the data uses mean={list(data.mean)} std={list(data.std)}"
        )
    if not problems:  # one dry forward catches the rest (e.g. a pickled module with other shapes)
        try:
            with torch.no_grad():
                out = teacher.model.eval()(torch.zeros(2, c, h, w))
        except Exception as e:
            raise UserError(f"{path}: the teacher cannot run on {c}x{h}x{w} inputs ({str(e).splitlines()[0]})") from None
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != data.num_classes:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            problems.append(f"{path}: the teacher outputs {shape}, expected (N, {data.num_classes}) class scores")
    if problems:
        raise UserError(*problems)
