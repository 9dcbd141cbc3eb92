"""Rebuilding a pruned model from plain data: its base architecture, its channel plan and its weights' shapes.

A pruned student is described by a channel plan, {module path: {channel attribute: value}} for every module whose
channel counts differ from the freshly built base architecture (`students.pruning.channel_plan` writes it). These
functions shrink a fresh base model back to it, so a student checkpoint holds only tensors, strings and numbers
and reloads with `torch.load(weights_only=True)` anywhere.

A plan also removes depth: an entry `{path: {"identity": True}}` names a residual block (its input and output
shapes match) that the pruned model runs as `nn.Identity`, its output its input. The blocks it keeps keep their
module paths, so their weights, attention points and the teacher's names still match.
"""

from __future__ import annotations

import torch
from torch import nn

from compressor.models.registry import create_model

IDENTITY = "identity"  # the plan entry of a block removed whole: {path: {"identity": True}}
# the attributes that hold a module's channel counts (Conv, BatchNorm, Linear, GroupNorm, LayerNorm)
CHANNEL_ATTRS = ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features",
                 "num_channels", "normalized_shape")


def apply_channel_plan(model: nn.Module, plan: dict, shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """Shrink a freshly built base model to a channel plan: set each listed module's channel attributes and give
    its parameters and buffers the shapes in `shapes` (a state_dict's key -> shape). The caller then loads the
    weights with `load_state_dict(strict=True)`, which checks every tensor. ValueError names a bad plan entry."""
    for name, attrs in plan.items():  # blocks removed whole first: the channel entries name modules they keep
        if isinstance(attrs, dict) and IDENTITY in attrs:
            if attrs != {IDENTITY: True} or not name:
                raise ValueError(f"channel plan entry {name!r}: a removed block is {{'{IDENTITY}': True}} alone")
            try:
                model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"channel plan removes {name!r}, which the architecture does not have") from None
            model.set_submodule(name, nn.Identity())
    modules = dict(model.named_modules())
    for name, attrs in plan.items():
        if IDENTITY in attrs:
            continue
        m = modules.get(name)
        if m is None:
            raise ValueError(f"channel plan names {name!r}, which the architecture does not have")
        for attr, v in attrs.items():
            if attr not in CHANNEL_ATTRS or not hasattr(m, attr):
                raise ValueError(f"channel plan sets {name}.{attr}, which is not a channel attribute of {type(m).__name__}")
            if not (isinstance(v, int) or (isinstance(v, list) and all(isinstance(i, int) for i in v))):
                raise ValueError(f"channel plan sets {name}.{attr} to {v!r}, not a channel count")
            setattr(m, attr, tuple(v) if isinstance(v, list) else int(v))
        prefix = f"{name}." if name else ""
        for pname, p in list(m.named_parameters(recurse=False)):
            shape = shapes.get(prefix + pname)
            if shape is not None and tuple(shape) != tuple(p.shape):
                setattr(m, pname, nn.Parameter(torch.empty(tuple(shape), dtype=p.dtype), requires_grad=p.requires_grad))
        for bname, b in list(m.named_buffers(recurse=False)):
            shape = shapes.get(prefix + bname)
            if b is not None and shape is not None and tuple(shape) != tuple(b.shape):
                m._buffers[bname] = torch.empty(tuple(shape), dtype=b.dtype)
    return model


def state_shapes(state_dict: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}


def model_from_plan(arch: str, plan, state_dict: dict, num_classes: int, in_channels: int) -> nn.Module:
    """A pruned model from a checkpoint's plain data; ValueError / RuntimeError if they do not fit together."""
    if not isinstance(plan, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in plan.items()):
        raise ValueError("the channel plan is not a mapping of module paths to channel counts")
    model = apply_channel_plan(create_model(arch, num_classes, in_channels), plan, state_shapes(state_dict))
    model.load_state_dict(state_dict, strict=True)
    return model
