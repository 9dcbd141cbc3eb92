"""Attention points: a model's intermediate outputs, found by dry forwards and captured with forward hooks.

A model's candidate points are its stage outputs: its `feature_info` when it declares one (the registry's
models, timm's), else found by one dry forward with hooks on every module (`stage_calls`). Explicit pairs may
name any module with a 4-D output (`all_points`). `FeatureTap` records the outputs during a normal forward
pass, so models need no rewriting to return features. Pairing teacher with student points: `pairs.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from compressor.core.errors import UserError


class FeatureTap:
    """Forward hooks on named modules; `tap.outputs` holds their outputs from the latest forward, in order.

    A hook is handed the module's output tensor itself; an in-place op after the module (a torchvision ResNet's
    `ReLU(inplace=True)` after `layer1.0.bn2`) changes that tensor before a loss reads it. With `input_shape`, one
    dry forward finds such points (`modified_in_place`) and the tap keeps a copy of their output instead;
    `take` refuses an output that changed after its hook all the same, rather than return the wrong quantity.
    """

    def __init__(self, model: nn.Module, paths: list[str], input_shape: tuple[int, int, int] | None = None):
        modules = dict(model.named_modules())
        self.paths = list(paths)
        self.clone = set(modified_in_place(model, self.paths, input_shape)) if input_shape else set()
        self.outputs: list[torch.Tensor | None] = [None] * len(paths)
        self._versions: list[int | None] = [None] * len(paths)
        self._handles = [modules[p].register_forward_hook(self._hook(i)) for i, p in enumerate(paths)]

    def _hook(self, i: int):
        copy = self.paths[i] in self.clone

        def hook(_module, _inputs, output):
            if copy and isinstance(output, torch.Tensor):
                output = output.clone()
            self.outputs[i] = output
            self._versions[i] = output._version if isinstance(output, torch.Tensor) else None

        return hook

    def take(self) -> list[torch.Tensor]:
        for path, out, version in zip(self.paths, self.outputs, self._versions):
            if isinstance(out, torch.Tensor) and version is not None and out._version != version:
                raise UserError(f"attention point {path}: its output was changed in place after the module ran "
                                "(e.g. by ReLU(inplace=True)); pick the module whose output that op makes")
        out, self.outputs = self.outputs, [None] * len(self.paths)
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def modified_in_place(model: nn.Module, paths: list[str], input_shape: tuple[int, int, int]) -> list[str]:
    """The `paths` whose output tensor a later in-place op changes during the forward (its version counter moves
    after the hook saw it), found by one dry forward."""
    modules = dict(model.named_modules())
    seen: dict[str, tuple[torch.Tensor, int]] = {}

    def hook(path):
        def record(_module, _inputs, output):
            if isinstance(output, torch.Tensor):
                seen[path] = (output, output._version)
        return record

    handles = [modules[p].register_forward_hook(hook(p)) for p in dict.fromkeys(paths)]
    try:
        _dry_forward(model, input_shape)
    finally:
        for h in handles:
            h.remove()
    return [p for p, (t, v) in seen.items() if t._version != v]


@dataclass
class Point:
    module: str
    shape: tuple[int, ...]  # (C, H, W) for one image
    stride: int


@dataclass
class Call:
    """One module's forward during a dry run: what went in and what came out (tensors by identity)."""

    module: str
    inputs: set[int]  # id() of the tensor arguments
    output: int  # id() of the output
    shape: tuple[int, ...] | None  # (C, H, W) of a 4-D output, else None
    leaf: bool  # no submodules


def _dry_forward(model: nn.Module, input_shape: tuple[int, int, int]) -> None:
    """One forward of a batch of 2 zero images in eval mode without grad; the model's mode is restored."""
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros(2, *input_shape, device=device))
    finally:
        model.train(was_training)


def probe_points(model: nn.Module, input_shape: tuple[int, int, int], paths: list[str] | None = None) -> list[Point]:
    """Output shape and stride of each of `paths` (default: the model's candidate points) from one dry forward."""
    if paths is None:
        return candidate_points(model, input_shape)
    tap = FeatureTap(model, paths)
    try:
        _dry_forward(model, input_shape)
        outs = tap.take()
    finally:
        tap.remove()
    points = []
    for path, out in zip(paths, outs):
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            continue  # not a spatial feature map
        points.append(Point(path, tuple(out.shape[1:]), stride(input_shape[-1], out.shape[-1])))
    return points


def trace_calls(model: nn.Module, input_shape: tuple[int, int, int]) -> list[Call]:
    """Every submodule's forward in one dry run, in the order they finished (a parent after its children)."""
    calls: list[Call] = []
    alive: list = []  # keeps the tensors alive during the run, so no id() is reused

    def hook(path: str, leaf: bool):
        def record(_module, inputs, output):
            alive.append((inputs, output))
            is_map = isinstance(output, torch.Tensor) and output.dim() == 4 and _spatial(output.shape, input_shape)
            calls.append(Call(path, {id(t) for t in inputs if isinstance(t, torch.Tensor)}, id(output),
                              tuple(output.shape[1:]) if is_map else None, leaf))

        return record

    handles = [m.register_forward_hook(hook(path, next(m.children(), None) is None))
               for path, m in model.named_modules() if path]
    try:
        _dry_forward(model, input_shape)
    finally:
        for h in handles:
            h.remove()
    return calls


def _spatial(shape, input_shape) -> bool:
    """An (N, C, H, W) feature map of the input image: not larger than it, the same stride along H and W.
    (Channels-last activations inside a block, (N, H, W, C), fail this.)"""
    h, w, in_h, in_w = shape[2], shape[3], input_shape[1], input_shape[2]
    return h <= in_h and w <= in_w and round(in_h / h) == round(in_w / w)


def _feature_paths(model: nn.Module) -> list[str]:
    """Module paths of the model's declared `feature_info`: ours (FeaturePoint) or timm's (dicts)."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, (list, tuple)):
        return []
    return [p["module"] if isinstance(p, dict) else p.module for p in info]


def stride(size_in: int, size_out: int) -> int:
    """The downsampling factor, a power of two: 28 -> 4 is stride 8 (the network pads 7 up to 8), not 7."""
    return 2 ** max(0, round(math.log2(size_in / size_out)))


def _point(call: Call, input_shape) -> Point:
    return Point(call.module, call.shape, stride(input_shape[-1], call.shape[-1]))


def all_points(model: nn.Module, input_shape: tuple[int, int, int]) -> list[Point]:
    """Every module with a 4-D output (any of them can be named in explicit pairs), in the order they finish.

    A module called more than once is listed once, with its last output (the one a hook would keep).
    """
    last = {c.module: c for c in trace_calls(model, input_shape) if c.shape is not None}
    return [_point(c, input_shape) for c in last.values()]


def candidate_points(model: nn.Module, input_shape: tuple[int, int, int]) -> list[Point]:
    """The model's stage outputs: its `feature_info` when it declares one, else found by `stage_calls`."""
    paths = _feature_paths(model)
    if paths:
        return probe_points(model, input_shape, paths)
    return [_point(c, input_shape) for c in stage_calls(trace_calls(model, input_shape))]


def stage_calls(calls: list[Call]) -> list[Call]:
    """The last module at each spatial resolution: one stage output per resolution.

    A tensor that a module of lower resolution (or a non-spatial head) takes as input leaves its resolution
    there; of the modules whose output leaves a resolution, the outermost is its stage output (ResNet `layer1`,
    not the next block's 1x1 conv that still runs at the old resolution), the last to finish on a tie. A
    resolution nothing leaves that way (the last one, when pooling is a function call) takes its
    last-finishing module that has submodules (a stage, not the final BN), or else its last-finishing module;
    at 1x1 only a module with submodules counts (ResNet-18's `layer4` on 28x28 images, not a global pool).
    Resolutions come out decreasing: an upsampling pool after the last stage is not a stage.
    """
    maps = [c for c in calls if c.shape is not None and (c.shape[1] * c.shape[2] > 1 or not c.leaf)]
    order = {id(c): i for i, c in enumerate(calls)}
    producer = {c.output: c for c in maps}  # the last call that returned the tensor: the outermost module

    def area(c: Call) -> int:
        return c.shape[1] * c.shape[2]

    def rank(c: Call) -> tuple[int, int]:  # shallower wins, then later
        return (-c.module.count("."), order[id(c)])

    chosen: dict[tuple, Call] = {}
    for c in calls:
        for t in c.inputs - {c.output}:
            p = producer.get(t)
            if p is not None and (c.shape is None or area(c) < area(p)):
                res = p.shape[1:]
                if res not in chosen or rank(p) > rank(chosen[res]):
                    chosen[res] = p
    for res in dict.fromkeys(c.shape[1:] for c in maps):
        if res not in chosen:
            at_res = [c for c in maps if c.shape[1:] == res]
            stages = [c for c in at_res if not c.leaf]
            chosen[res] = (stages or at_res)[-1]
    stages, smallest = [], None
    for c in sorted(chosen.values(), key=lambda c: order[id(c)]):
        if smallest is None or area(c) < smallest:
            stages.append(c)
            smallest = area(c)
    return stages
