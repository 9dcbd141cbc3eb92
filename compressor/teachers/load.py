"""Loading a teacher the user already has, and checking that it fits the recipe's data.

Formats, told apart by the file's content (not its name):
- a compressor checkpoint (from `compress train`): self-describing;
- a plain `state_dict` (also wrapped as `{"state_dict": ...}` or `{"model": ...}`) of `teacher.arch`: any
  registered architecture, torchvision classifiers and `timm:NAME` included; the class and channel counts are
  read from the weights;
- a TorchScript archive (`torch.jit.save`) or a `torch.export` program (`torch.export.save`, `.pt2`): turned
  into a hookable graph module by `graphs.py`;
- a fully pickled `nn.Module`, only with `--trust-teacher`.
Nothing is unpickled with `weights_only=False` unless the user passes `--trust-teacher`; `_load_pickled` is the
one place that does it, and `torch.export.load` runs with such loads refused.
"""

from __future__ import annotations

import difflib
import logging
import warnings
import zipfile
from functools import reduce
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx, nn

from compressor.models import checkpoint as ckpt_io
from compressor.data.datasets import DataBundle
from compressor.core.errors import UserError
from compressor.core.errors import first_line
from compressor.models import create_model, is_registered, list_models

TRUST_HINT = "pass --trust-teacher if you trust this file"


@dataclass
class Teacher:
    model: nn.Module
    arch: str
    source: str  # "compressor checkpoint", "state_dict", "TorchScript", "torch.export", "pickled module", ...
    classes: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_shape: tuple[int | None, ...] | None = None  # (C, H, W) the teacher requires; None where any size goes
    num_classes: int | None = None
    native_shape: tuple[int, int, int] | None = None  # (C, H, W) it was trained on, when the file says


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
) -> Teacher:
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
            return Teacher(model.eval(), str(spec), "architecture (untrained)", input_shape=(channels, None, None))
        close = difflib.get_close_matches(str(spec), list_models(), n=3)
        raise UserError(f"{spec}: neither a file nor a registered architecture"
                        + (f" (did you mean {', '.join(close)}?)" if close else ""))
    kind = file_format(path)
    if kind == "torchscript":
        return _from_torchscript(path, input_shape)
    if kind == "export":
        return _from_exported(path, trust)
    obj = _load_pickled(path) if trust else ckpt_io.load_trusted_dict(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):  # {"model": module, "epoch": ...}
        obj = obj["model"]
    if isinstance(obj, nn.Module):
        model = obj.eval()
        return Teacher(model, getattr(obj, "arch", type(obj).__name__), "pickled module",
                       input_shape=(first_conv_channels(model), None, None))
    if ckpt_io.is_compressor_checkpoint(obj):
        if arch and arch_key:
            check_checkpoint_arch(path, obj, arch, arch_key)
        return Teacher(
            ckpt_io.model_from_checkpoint(obj, path), obj["arch"], "compressor checkpoint", list(obj["classes"]),
            tuple(obj["mean"]), tuple(obj["std"]), (obj["input_shape"][0], None, None), len(obj["classes"]),
            tuple(obj["input_shape"]),
        )
    state = _unwrap_state_dict(obj)
    if state is None:
        raise UserError(f"{path}: neither a compressor checkpoint nor a state_dict (a mapping of parameter names to tensors)")
    if not arch:
        raise UserError(f"{path}: a state_dict holds weights only; name its architecture (teacher.arch / --arch)")
    return _from_state_dict(path, arch, state)


def check_checkpoint_arch(path: Path, ckpt: dict, arch: str, arch_key: str) -> None:
    """A compressor checkpoint's architecture must be the `arch` the user gave: its `arch`, or for a pruned
    student (a `pruned` channel plan over the base `arch`) also `<base>-pruned`, the name distill reports."""
    own = ckpt["arch"]
    pruned = ckpt.get("pruned") is not None
    if arch == own or (pruned and arch == f"{own}-pruned"):
        return
    shown = f"{own}-pruned" if pruned else own
    raise UserError(f"{path}: {arch_key} is {arch}, but this compressor checkpoint holds a {shown}; "
                    f"set {arch_key} to {shown} or leave it out (the checkpoint names its own architecture)")


def load_teacher(path: str | Path, arch: str, data: DataBundle, *, trust: bool = False, arch_given: bool = True,
                 normalisation_given: bool = True) -> Teacher:
    """The teacher for `compress distill`, checked against the recipe's data (classes, channels, size,
    normalisation); a mismatch is a UserError that gives both values. `arch` is the recipe's teacher.arch: it
    builds a state_dict, and must match a compressor checkpoint's own architecture when `arch_given` (the recipe
    wrote it rather than leaving the default)."""
    teacher = open_model(path, arch=arch, input_shape=data.input_shape, trust=trust, names=False,
                         arch_key="teacher.arch" if arch_given else None)
    adopt_normalisation(teacher, data, normalisation_given)
    check_fits_data(teacher, data, Path(path))
    return teacher


def adopt_normalisation(teacher: Teacher, data: DataBundle, given: bool) -> None:
    """Feed the data as the teacher was fed: where the teacher records its mean/std (a compressor checkpoint,
    timm's pretrained_cfg) and the recipe does not set data.mean/std (`given`), the data takes the teacher's
    (recorded in data.info["normalisation"]); a recipe that sets them must agree (check_fits_data)."""
    if given or teacher.mean is None or len(teacher.mean) != data.input_shape[0]:
        return
    if tuple(teacher.mean) != tuple(data.mean) or tuple(teacher.std) != tuple(data.std):
        data.mean, data.std = tuple(teacher.mean), tuple(teacher.std)
        data.info["normalisation"] = "teacher"


def _unwrap_state_dict(obj) -> dict | None:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        if obj and all(isinstance(k, str) for k in obj) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    return None


def _from_state_dict(path: Path, arch: str, state: dict) -> Teacher:
    """Build `arch` with the class and channel counts its weights have, then load them."""
    classes, channels = _state_dims(state)
    model = create_model(arch, classes or 10, channels or 3)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
        raise UserError(f"{path}: weights do not fit teacher.arch={arch}: {'; '.join(detail)}")
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        k = wrong[0]
        raise UserError(
            f"{path}: weights do not fit teacher.arch={arch}: {k} has shape {tuple(state[k].shape)}, "
            f"{arch} expects {tuple(own[k].shape)}"
        )
    model.load_state_dict(state)
    mean, std = _pretrained_normalisation(model, channels or 3)
    return Teacher(model.eval(), arch, "state_dict", mean=mean, std=std, input_shape=(channels, None, None),
                   num_classes=classes)


def _pretrained_normalisation(model: nn.Module, channels: int) -> tuple[tuple | None, tuple | None]:
    """The mean/std a timm model's `pretrained_cfg` says its weights expect, when it has one per input channel.
    A default for the data, not a record of training: a recipe's data.mean/std override it without complaint."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("mean") and cfg.get("std") and len(cfg["mean"]) == channels:
        return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    return None, None


def _state_dims(state: dict) -> tuple[int | None, int | None]:
    """(classes, input channels) read from the weights: the first 4-D weight is the stem convolution's
    (out, in, kH, kW), the last 2-D weight the classifier's (classes, features). A saved state_dict keeps the
    order in which the model registered its modules, stem first and head last."""
    weights = [v for k, v in state.items() if k.endswith("weight")]
    conv = next((w for w in weights if w.dim() == 4), None)
    head = next((w for w in reversed(weights) if w.dim() == 2), None)
    return (head.shape[0] if head is not None else None), (conv.shape[1] if conv is not None else None)


def first_conv_channels(model: nn.Module) -> int | None:
    """Input channels of the first convolution: the module's for nn.Modules, the first conv op's for graphs."""
    if isinstance(model, fx.GraphModule):
        aten = torch.ops.aten
        groups_at = {aten.conv2d.default: 6, aten.convolution.default: 8}  # index of `groups` in the op's args
        for node in model.graph.nodes:
            if node.target in groups_at and node.args[1].op == "get_attr":
                weight = reduce(getattr, node.args[1].target.split("."), model)
                i = groups_at[node.target]
                return weight.shape[1] * (node.args[i] if len(node.args) > i else 1)
        return None
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else None


def _from_torchscript(path: Path, input_shape: tuple[int, int, int] | None) -> Teacher:
    from compressor.teachers.graphs import from_torchscript

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load is deprecated in favour of torch.export
            scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # a corrupt or foreign archive: any failure is the user's file
        raise UserError(f"{path}: not a loadable TorchScript archive ({first_line(e)})") from None
    example = torch.zeros(2, *(input_shape or (3, 32, 32)))  # only types the graph: the result runs at any size
    try:
        gm = from_torchscript(scripted, example)
    except UserError:
        raise
    except Exception as e:
        raise UserError(
            f"{path}: cannot reach the attention points of this TorchScript model ({first_line(e)}); "
            "save it with torch.export.save, or as a state_dict of a registered architecture"
        ) from None
    return Teacher(gm.eval(), f"torchscript:{scripted.original_name}", "TorchScript",
                   input_shape=(first_conv_channels(gm), None, None))


@contextmanager
def _weights_only_loads(path: Path):
    """Inside `torch.export.load`, refuse the unrestricted `torch.load` (weights_only off) it falls back to for
    pickled payloads: a program from an untrusted source must not run code."""
    real = torch.load

    def load(f, *args, weights_only=None, **kwargs):
        if weights_only is False:
            raise UserError(
                f"{path}: the program holds pickled Python objects, which could run code when loaded; {TRUST_HINT}"
            )
        return real(f, *args, weights_only=True, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = real


def _from_exported(path: Path, trust: bool) -> Teacher:
    from compressor.teachers.graphs import exported_input_shape, from_exported, training_mode_ops

    quiet = logging.getLogger("torch.export")  # it logs a traceback for a corrupt file, then raises anyway
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        if trust:
            program = torch.export.load(str(path))
        else:
            with _weights_only_loads(path):
                program = torch.export.load(str(path))
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path}: not a loadable torch.export program ({first_line(e)})") from None
    finally:
        quiet.setLevel(level)
    shape = exported_input_shape(program)
    if shape[0] is not None:
        raise UserError(
            f"{path}: the program was exported for batches of exactly {shape[0]}; export it with a dynamic batch "
            "dimension: torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},))"
        )
    gm = from_exported(program)
    train_ops = training_mode_ops(gm)
    if train_ops:
        raise UserError(
            f"{path}: the program was exported in training mode ({', '.join(train_ops)} use batch statistics or "
            "drop activations); call model.eval() before torch.export.export"
        )
    root = next((n.meta["nn_module_stack"] for n in gm.graph.nodes if n.meta.get("nn_module_stack")), None)
    name = list(root.values())[0][1].rsplit(".", 1)[-1] if root else "program"
    fixed = shape[1:] if None not in shape[1:] else None
    return Teacher(gm, f"torch.export:{name}", "torch.export", input_shape=shape[1:], native_shape=fixed)


def _load_pickled(path: Path):
    """The one place that unpickles arbitrary objects: only reached with --trust-teacher."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)  # --trust-teacher only
    except Exception as e:  # a trusted file can still be corrupt; any failure is the user's file
        raise UserError(f"{path}: cannot load ({type(e).__name__}: {first_line(e)})") from None


def check_fits_data(teacher: Teacher, data: DataBundle, path: Path) -> None:
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
