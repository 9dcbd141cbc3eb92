"""Attention points: capture intermediate outputs with forward hooks, and pair teacher with student points.

A model's candidate points are its stage outputs (`feature_info` from the registry). `FeatureTap` records
their outputs during a normal forward pass, so models need no rewriting to return features.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UserError


class FeatureTap:
    """Forward hooks on named modules; `tap.outputs` holds their outputs from the latest forward, in order."""

    def __init__(self, model: nn.Module, paths: list[str]):
        modules = dict(model.named_modules())
        self.paths = list(paths)
        self.outputs: list[torch.Tensor | None] = [None] * len(paths)
        self._handles = [modules[p].register_forward_hook(self._hook(i)) for i, p in enumerate(paths)]

    def _hook(self, i: int):
        def hook(_module, _inputs, output):
            self.outputs[i] = output

        return hook

    def take(self) -> list[torch.Tensor]:
        out, self.outputs = self.outputs, [None] * len(self.paths)
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@dataclass
class Point:
    module: str
    shape: tuple[int, ...]  # (C, H, W) for one image
    stride: int


def probe_points(model: nn.Module, input_shape: tuple[int, int, int], paths: list[str] | None = None) -> list[Point]:
    """One dry forward (batch of 2, eval mode, no grad) to learn each point's output shape and stride."""
    if paths is None:
        paths = [p.module for p in getattr(model, "feature_info", [])]
    tap = FeatureTap(model, paths)
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(2, *input_shape, device=device))
        outs = tap.take()
    finally:
        tap.remove()
        model.train(was_training)
    points = []
    for path, out in zip(paths, outs):
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            continue  # not a spatial feature map
        points.append(Point(path, tuple(out.shape[1:]), max(1, input_shape[-1] // out.shape[-1])))
    return points


def pair_auto(teacher: list[Point], student: list[Point]) -> list[tuple[Point, Point]]:
    """Pair points of equal spatial resolution (the paper's group outputs); the last point wins per size."""
    by_size = {p.shape[1:]: p for p in student}
    pairs = [(t, by_size[t.shape[1:]]) for t in teacher if t.shape[1:] in by_size]
    if not pairs:
        raise UserError(
            "distill.at.pairs: auto found no teacher and student points with the same spatial size "
            f"(teacher: {[f'{p.module}{list(p.shape)}' for p in teacher]}; "
            f"student: {[f'{p.module}{list(p.shape)}' for p in student]}); list pairs explicitly"
        )
    return pairs


def _match(pattern: str, points: list[Point], role: str) -> list[Point]:
    hits = [p for p in points if fnmatch.fnmatchcase(p.module, pattern)]
    if not hits:
        raise UserError(
            f"distill.at.pairs: {role} point {pattern!r} matches nothing; valid: {', '.join(p.module for p in points)}"
        )
    return hits


def pair_explicit(pairs, teacher: list[Point], student: list[Point]) -> list[tuple[Point, Point]]:
    """Explicit pairs by module path (wildcards allowed: `layer*` pairs matches in order)."""
    out, problems = [], []
    for pair in pairs:
        try:
            ts, ss = _match(pair.teacher, teacher, "teacher"), _match(pair.student, student, "student")
        except UserError as e:
            problems.extend(e.problems)
            continue
        if len(ts) != len(ss):
            problems.append(
                f"distill.at.pairs: {pair.teacher!r} matches {len(ts)} teacher points but {pair.student!r} "
                f"matches {len(ss)} student points"
            )
            continue
        out.extend(zip(ts, ss))
    if problems:
        raise UserError(*problems)
    return out
