"""The teacher formats other than a compressor checkpoint, each read into a `LoadedModel` (teachers.load picks one
by the file's content): a plain state_dict of a named architecture, a TorchScript archive, a `torch.export`
program (both turned into hookable graph modules by teachers.graphs), and a pickled module (only trusted).

Nothing is unpickled with `weights_only=False` unless the user passes `--trust-teacher`; `read_pickled` is the
one place that does it, and `torch.export.load` runs with such loads refused.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

import torch
from torch import fx, nn

from compressor.core.errors import UserError, first_line
from compressor.models import create_model

TRUST_HINT = "pass --trust-teacher if you trust this file"


@dataclass
class LoadedModel:
    """A model read from a file or built from a registered name, with what the file says about it: the teacher of
    `compress distill`, and any model `compress inspect` / `export` / `verify --reference` open (students too)."""

    model: nn.Module
    arch: str
    source: str  # "compressor checkpoint", "state_dict", "TorchScript", "torch.export", "pickled module", ...
    classes: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_shape: tuple[int | None, ...] | None = None  # (C, H, W) the teacher requires; None where any size goes
    num_classes: int | None = None
    native_shape: tuple[int, int, int] | None = None  # (C, H, W) it was trained on, when the file says


def unwrap_state_dict(obj) -> dict | None:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        if obj and all(isinstance(k, str) for k in obj) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    return None


def read_state_dict(path: Path, arch: str, state: dict) -> LoadedModel:
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
    return LoadedModel(model.eval(), arch, "state_dict", mean=mean, std=std, input_shape=(channels, None, None),
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


def read_torchscript(path: Path, input_shape: tuple[int, int, int] | None) -> LoadedModel:
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
    return LoadedModel(gm.eval(), f"torchscript:{scripted.original_name}", "TorchScript",
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


def read_exported(path: Path, trust: bool) -> LoadedModel:
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
    return LoadedModel(gm, f"torch.export:{name}", "torch.export", input_shape=shape[1:], native_shape=fixed)


def read_pickled(path: Path):
    """The one place that unpickles arbitrary objects: only reached with --trust-teacher."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)  # --trust-teacher only
    except Exception as e:  # a trusted file can still be corrupt; any failure is the user's file
        raise UserError(f"{path}: cannot load ({type(e).__name__}: {first_line(e)})") from None
