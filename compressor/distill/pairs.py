"""Attention pairs: which teacher point each student point learns from.

A `Pair` is what travels everywhere a pair is needed (the objective's terms, the training taps, the report, the
figures): its name (the student point's module path; the loss terms are `at.<name>`, `feat.<name>`) and the two
points, each a module path with its output shape. `find_pairs` makes them from the recipe's `distill.at.pairs`:
`auto` pairs the stage outputs of equal resolution, explicit pairs may name any module with a 4-D output.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

from compressor.core.errors import UserError
from compressor.distill.points import Point, all_points, probe_points


@dataclass(frozen=True)
class Pair:
    name: str  # the student point's module path: the terms' names are at.<name> and feat.<name>
    teacher: Point
    student: Point

    @classmethod
    def of(cls, teacher: Point, student: Point) -> "Pair":
        return cls(student.module, teacher, student)

    def describe(self) -> dict:
        """The pair as report.json's distillation.pairs lists it."""
        return {"teacher": self.teacher.module, "student": self.student.module, "shape": list(self.student.shape),
                "teacher_shape": list(self.teacher.shape)}


def find_pairs(spec, teacher: nn.Module, student: nn.Module, input_shape) -> list[Pair]:
    """The attention pairs of `distill.at.pairs` (`spec`: "auto" or a list of {teacher, student} patterns)."""
    if spec == "auto":
        return pair_auto(probe_points(teacher, input_shape), probe_points(student, input_shape))
    return pair_explicit(spec, all_points(teacher, input_shape), all_points(student, input_shape))


def pair_auto(teacher: list[Point], student: list[Point]) -> list[Pair]:
    """Pair points of equal spatial resolution (the paper's group outputs); the last point wins per size.

    1x1 points are left out: the attention map of a 1x1 feature map is the constant 1, so its loss is 0.
    """
    by_size = {p.shape[1:]: p for p in student if p.shape[1] * p.shape[2] > 1}
    pairs = [Pair.of(t, by_size[t.shape[1:]]) for t in teacher if t.shape[1:] in by_size]
    if not pairs:
        raise UserError(
            "distill.at.pairs: auto found no teacher and student points with the same spatial size "
            f"(teacher: {[f'{p.module}{list(p.shape)}' for p in teacher]}; "
            f"student: {[f'{p.module}{list(p.shape)}' for p in student]}); list pairs explicitly"
        )
    return pairs


def path_matches(pattern: str, path: str) -> bool:
    """Wildcards match within one component of a dotted path: `layer*` is layer1..layer4, not layer1.0.conv1."""
    parts, pats = path.split("."), pattern.split(".")
    return len(parts) == len(pats) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pats))


LISTED = 60  # valid paths named in an error before "... and N more"


def _match(pattern: str, points: list[Point], role: str) -> list[Point]:
    hits = [p for p in points if path_matches(pattern, p.module)]
    if not hits:
        names = [p.module for p in points]
        more = f" ... and {len(names) - LISTED} more (`compress inspect MODEL --all`)" if len(names) > LISTED else ""
        raise UserError(
            f"distill.at.pairs: {role} point {pattern!r} matches no module with a 4-D output; "
            f"valid: {', '.join(names[:LISTED])}{more}"
        )
    return hits


def pair_explicit(pairs, teacher: list[Point], student: list[Point]) -> list[Pair]:
    """Explicit pairs by module path; `points` are all modules with a 4-D output (`all_points`). Wildcards
    (`layer*`) pair their matches in the order the modules run."""
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
        for t, s_ in zip(ts, ss):
            flat = [f"{role} {p.module} {list(p.shape)}" for role, p in (("teacher", t), ("student", s_))
                    if p.shape[1] * p.shape[2] == 1]
            if flat:
                problems.append(f"distill.at.pairs: {' and '.join(flat)} is 1x1: its attention map is the constant 1 "
                                "and its loss 0 whatever the student does; pair an earlier point (or use a larger "
                                "data.image_size)")
            else:
                out.append(Pair.of(t, s_))
    if problems:
        raise UserError(*problems)
    return out
