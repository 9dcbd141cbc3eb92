"""Loading a teacher the user already has, and checking that it fits the recipe's data.

Formats, told apart by the file's content (not its name):
- a compressor checkpoint (from `compress train`): self-describing;
- a plain `state_dict` (also wrapped as `{"state_dict": ...}` or `{"model": ...}`) of `teacher.arch`: any
  registered architecture, torchvision classifiers and `timm:NAME` included; the class and channel counts are
  read from the weights;
- a TorchScript archive (`torch.jit.save`) or a `torch.export` program (`torch.export.save`, `.pt2`): turned
  into a hookable graph module by `graphs.py`;
- a fully pickled `nn.Module`, only with `--trust-teacher`.
The readers of the formats other than a compressor checkpoint: teachers.formats.
"""

from __future__ import annotations

import difflib
import zipfile
from pathlib import Path

import torch
from torch import nn

from compressor.core.errors import UserError, first_line
from compressor.data.splits import DataBundle
from compressor.models import checkpoint as ckpt_io
from compressor.models import create_model, is_registered, list_models
from compressor.teachers.formats import (
    LoadedModel,
    first_conv_channels,
    read_exported,
    read_pickled,
    read_state_dict,
    read_torchscript,
    unwrap_state_dict,
)


def file_format(path: Path) -> str:
    """"torchscript", "export" or "torch" (torch.save: a zip with data.pkl, or the legacy pickle format)."""
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a model file")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise UserError(f"{path}: not a readable archive ({e})") from None
        if any(n.endswith("/archive_format") for n in names):
            return "export"
        if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
            return "torchscript"
    return "torch"


def open_model(
    spec: str | Path,
    *,
    arch: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    trust: bool = False,
    names: bool = True,
    arch_key: str | None = "--arch",
) -> LoadedModel:
    """Any model `compress inspect` / `export` / `distill` accept: a file in one of the formats above, or (with
    `names`) a registered architecture name, built untrained with `num_classes` and `input_shape`'s channels.

    `arch` builds a state_dict; a compressor checkpoint names its own architecture, and an `arch` that says
    another one is a UserError naming `arch_key` (the option or recipe key that gave it; None: `arch` is only a
    default, not checked)."""
    path = Path(spec)
    if names and not path.exists():
        if is_registered(str(spec)):
            channels = input_shape[0] if input_shape else 3
            model = create_model(str(spec), num_classes or 10, channels)
            return LoadedModel(model.eval(), str(spec), "architecture (untrained)", input_shape=(channels, None, None))
        close = difflib.get_close_matches(str(spec), list_models(), n=3)
        raise UserError(f"{spec}: neither a file nor a registered architecture"
                        + (f" (did you mean {', '.join(close)}?)" if close else ""))
    kind = file_format(path)
    if kind == "torchscript":
        return read_torchscript(path, input_shape)
    if kind == "export":
        return read_exported(path, trust)
    obj = read_pickled(path) if trust else ckpt_io.load_trusted_dict(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):  # {"model": module, "epoch": ...}
        obj = obj["model"]
    if isinstance(obj, nn.Module):
        model = obj.eval()
        return LoadedModel(model, getattr(obj, "arch", type(obj).__name__), "pickled module",
                       input_shape=(first_conv_channels(model), None, None))
    if ckpt_io.is_compressor_checkpoint(obj):
        if arch and arch_key:
            check_checkpoint_arch(path, obj, arch, arch_key)
        return LoadedModel(
            ckpt_io.model_from_checkpoint(obj, path), obj["arch"], "compressor checkpoint", list(obj["classes"]),
            tuple(obj["mean"]), tuple(obj["std"]), (obj["input_shape"][0], None, None), len(obj["classes"]),
            tuple(obj["input_shape"]),
        )
    state = unwrap_state_dict(obj)
    if state is None:
        raise UserError(f"{path}: neither a compressor checkpoint nor a state_dict (a mapping of parameter names to tensors)")
    if not arch:
        raise UserError(f"{path}: a state_dict holds weights only; name its architecture (teacher.arch / --arch)")
    return read_state_dict(path, arch, state)


def check_checkpoint_arch(path: Path, ckpt: dict, arch: str, arch_key: str) -> None:
    """A compressor checkpoint's architecture must be the `arch` the user gave: its `arch`, or for a pruned
    student (a `pruned` channel plan over the base `arch`) also `<base>-pruned`, the name distill reports."""
    shown = ckpt_io.reported_arch(ckpt)
    if arch in (ckpt["arch"], shown):
        return
    raise UserError(f"{path}: {arch_key} is {arch}, but this compressor checkpoint holds a {shown}; "
                    f"set {arch_key} to {shown} or leave it out (the checkpoint names its own architecture)")


def load_teacher(path: str | Path, arch: str, data: DataBundle, *, trust: bool = False,
                 arch_given: bool = True) -> tuple[LoadedModel, DataBundle]:
    """The teacher for `compress distill`, checked against the recipe's data (classes, channels, size,
    normalisation); a mismatch is a UserError that gives both values. `arch` is the recipe's teacher.arch: it
    builds a state_dict, and must match a compressor checkpoint's own architecture when `arch_given` (the recipe
    wrote it rather than leaving the default). Returns the teacher and the data as the teacher is fed
    (`fed_as_teacher`: a new bundle where the teacher records another normalisation; `data` is not changed)."""
    teacher = open_model(path, arch=arch, input_shape=data.input_shape, trust=trust, names=False,
                         arch_key="teacher.arch" if arch_given else None)
    data = fed_as_teacher(teacher, data)
    check_fits_data(teacher, data, Path(path))
    return teacher, data


def fed_as_teacher(teacher: LoadedModel, data: DataBundle) -> DataBundle:
    """Feed the data as the teacher was fed: where the teacher records its mean/std (a compressor checkpoint,
    timm's pretrained_cfg) and the recipe does not set data.mean/std, the data takes the teacher's; a recipe that
    sets them must agree (check_fits_data)."""
    if data.preprocess.normalisation == "recipe" or teacher.mean is None or len(teacher.mean) != data.input_shape[0]:
        return data
    if tuple(teacher.mean) != tuple(data.mean) or tuple(teacher.std) != tuple(data.std):
        return data.with_normalisation(teacher.mean, teacher.std, "teacher")
    return data


def check_fits_data(teacher: LoadedModel, data: DataBundle, path: Path) -> None:
    """The teacher's class count, input channels, input size and normalisation must be those of the data."""
    problems = []
    c, h, w = data.input_shape
    classes = len(teacher.classes) if teacher.classes is not None else teacher.num_classes
    if classes is not None and classes != data.num_classes:
        problems.append(f"{path}: the teacher has {classes} classes, the data has {data.num_classes}")
    need = teacher.input_shape or (None, None, None)
    if need[0] is not None and need[0] != c:
        problems.append(f"{path}: the teacher takes {need[0]} input channels, the data has {c}")
    if (need[1] is not None and need[1] != h) or (need[2] is not None and need[2] != w):
        problems.append(f"{path}: the teacher takes {need[1]}x{need[2]} images, the data's are {h}x{w} (data.image_size)")
    if teacher.mean is not None and teacher.source != "state_dict" and (  # a state_dict's is only timm's default
        len(teacher.mean) != len(data.mean)
        or any(abs(a - b) > 1e-3 for a, b in zip(teacher.mean + teacher.std, data.mean + data.std))
    ):
        problems.append(
            f"{path}: the teacher was trained with normalisation mean={list(teacher.mean)} std={list(teacher.std)}, "
            f"the data uses mean={list(data.mean)} std={list(data.std)}"
        )
    if not problems:  # one dry forward catches the rest (e.g. a pickled module or a graph with other shapes)
        try:
            with torch.no_grad():
                out = teacher.model.eval()(torch.zeros(2, c, h, w))
        except Exception as e:
            raise UserError(f"{path}: the teacher cannot run on {c}x{h}x{w} inputs ({first_line(e)})") from None
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            problems.append(f"{path}: the teacher outputs {shape}, expected (N, {data.num_classes}) class scores")
        elif out.shape[1] != data.num_classes:
            problems.append(f"{path}: the teacher has {out.shape[1]} classes, the data has {data.num_classes}")
    if problems:
        raise UserError(*problems)
