"""A student for a latency budget: candidates grown from the teacher (channels removed, whole residual blocks
removed, or both) are each exported and timed on the deployment runtime, and the one that meets every target
with the most accuracy right after pruning and BatchNorm recalibration is distilled.

Parameters and FLOPs are the wrong handle for latency (at batch 1 a net of small convolutions pays per layer), so
the search measures, through a `measure(model) -> Measured` callable: jobs.distill passes verify.candidates' (the
run's exporter, parity, onnxruntime against the teacher in alternating rounds), so students/ stays below export/
and verify/ in the package order. Bounded: at most 16 candidates, each one export and about a second of timing.
- depth levels: none, and the least-missed third, two thirds and all of the removable blocks (`pruning.rank_blocks`:
  the teacher's loss rise without each);
- at each level, a secant search on measured latency for the width (the share of channels removed, with the
  recipe's criterion, allocation and round_to), kept between the widths measured too slow and fast enough, three
  to six candidates a level (six when width alone is searched); the best again at round_to 8 and 16;
- never a candidate whose PyTorch / ONNX parity fails; of those that meet every target the most accurate (validation
  images, after BatchNorm recalibration on a calibration sample), timed once more before it is chosen;
- beside student.size / student.flops, each level starts at the fewest channels removed that meet them.
Over 300 lines on purpose: `search_student`'s helpers (a candidate at a depth, the size floor, timing one) close
over one search's state; split out, each would take the teacher, the config, the targets and the rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from compressor.core.errors import UserError
from compressor.core.progress import console
from compressor.models.batchnorm import recalibrate_bn
from compressor.models.measure import count_flops, count_params
from compressor.students.pruning import prune_copy, rank_blocks, removable_blocks
from compressor.students.results import LatencySearch, RankedBlock, SearchCandidate

AIM = 0.93  # candidates aim this far under the latency target: the final verification times the student again
ROUND_TOS = (8, 16)  # channel multiples tried at the best candidate (onnxruntime's CPU kernels block by 8 or 16)
SMALLEST = 0.85  # the most channels a candidate loses (near 1 the pruner leaves groups whole: FLOPs rise again)
MAX_CANDIDATES = 16  # a hard bound on the search's work, whatever the teacher


@dataclass
class Measured:
    """One candidate timed against the teacher in alternating rounds (what `measure` returns)."""

    p50_ms: float
    teacher_p50_ms: float
    ratio: float  # candidate p50 / teacher p50
    interval: list[float]  # the lowest and highest ratio of one round's medians
    max_abs_diff: float
    parity_ok: bool
    provider: str
    threads: int


@torch.no_grad()
def _accuracy(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    model.eval()
    right = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return 100.0 * right / max(1, sum(len(y) for _, y in batches))


def search_student(
    teacher: nn.Module, *, input_shape: tuple[int, int, int], num_classes: int, cfg,
    measure: Callable[[nn.Module], Measured], calibration: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]],
    accuracy_batches: list[tuple[torch.Tensor, torch.Tensor]], accuracy_on: str, grads: dict | None,
    target_params: int | None, target_flops: int | None, ranking_batches: Iterable,
) -> tuple[nn.Module, SearchCandidate, LatencySearch]:
    """The chosen candidate (pruned, BatchNorm recalibrated on `calibration()`), its row and the whole search.

    `cfg`: the recipe's student section (latency, latency_ms, latency_batch, search, criterion, allocation,
    round_to, keep_stem). Raises UserError naming the closest latency measured when no candidate meets the
    targets."""
    started = time.perf_counter()
    teacher = teacher.cpu().eval()
    example = torch.zeros(2, *input_shape)
    t_flops = count_flops(teacher, input_shape)
    removable = removable_blocks(teacher, input_shape) if cfg.search in ("both", "depth") else []
    ranked = rank_blocks(teacher, removable, ranking_batches) if removable else []
    if cfg.search == "depth" and not ranked:
        raise UserError("student.search: depth: the teacher has no residual block whose input and output shapes "
                        "match, so no block can be removed; search width or both")
    k = len(ranked)  # the depth levels: how many blocks a candidate drops: none, a third, two thirds, all
    levels = sorted({0, round(k / 3), round(2 * k / 3), k})
    widths = cfg.search != "depth"
    calib = list(calibration())
    n_calib = sum(len(y) for _, y in calib)
    rows: list[SearchCandidate] = []
    models: dict[str, nn.Module] = {}
    measured: list[Measured] = []
    what = {"both": "width and depth", "width": "width", "depth": "depth"}[cfg.search]
    console.print(f"latency search ({what}): {len(ranked)} removable blocks, depth levels {levels}; each candidate "
                  f"exported and timed against the teacher at batch {cfg.latency_batch} ...")

    def pruned(depth: int, ratio: float, round_to: int | None) -> nn.Module:  # ranked[:depth] removed, then width
        return prune_copy(teacher, ratio, criterion=cfg.criterion, example=example, num_classes=num_classes,
                          keep_stem=cfg.keep_stem, grads=grads, round_to=round_to,
                          global_ranking=cfg.allocation == "global", removed=[n for n, _ in ranked[:depth]])

    def target_ratio() -> float:
        # the latency target as a fraction of the teacher's p50 (latency_ms over the teacher's last p50)
        t_ms = measured[-1].teacher_p50_ms if measured else None
        goals = [cfg.latency, cfg.latency_ms and (cfg.latency_ms / t_ms if t_ms else 1.0)]
        return min(g for g in goals if g is not None)

    def misses(p50_ms: float, ratio: float) -> str | None:  # which latency target a measurement misses
        if cfg.latency is not None and ratio > cfg.latency:
            return f"latency {ratio:.3f} of the teacher's > {cfg.latency:g}"
        if cfg.latency_ms is not None and p50_ms > cfg.latency_ms:
            return f"p50 {p50_ms:.3f} ms > {cfg.latency_ms:g} ms"
        return None

    def try_one(depth: int, ratio: float, round_to: int | None) -> SearchCandidate | None:
        name = f"d{depth} w{ratio:.2f} r{round_to or 1}"
        if any(r.name == name for r in rows) or (depth == 0 and ratio == 0) or len(rows) >= MAX_CANDIDATES:
            return None
        model = pruned(depth, ratio, round_to)
        params, flops = count_params(model), count_flops(model, input_shape)
        row = dict(name=name, removed_blocks=[n for n, _ in ranked[:depth]], width_ratio=ratio, round_to=round_to,
                   params=params, flops=flops)
        over = [t for t, v, lim in (("parameters", params, target_params), ("FLOPs", flops, target_flops))
                if lim is not None and v > lim]
        if over:  # a candidate over student.size / flops is not worth timing
            rows.append(SearchCandidate(**row, meets=False, why_not=f"over the {' and '.join(over)} target"))
            console.print(f"  {name}: {params:,} params, {flops / 1e6:.2f}M FLOPs: over the {' and '.join(over)} "
                          "target, not timed")
            return rows[-1]
        recalibrate_bn(model, calib)  # every BN's statistics anew on the calibration sample
        model.eval()
        m = measure(model)
        measured.append(m)
        acc = _accuracy(model, accuracy_batches)
        why = misses(m.p50_ms, m.ratio) or (None if m.parity_ok else "PyTorch / ONNX parity failed")
        rows.append(SearchCandidate(**row, p50_ms=m.p50_ms, teacher_p50_ms=m.teacher_p50_ms, latency_ratio=m.ratio,
                                    latency_ratio_interval=m.interval, accuracy=acc, max_abs_diff=m.max_abs_diff,
                                    parity_ok=m.parity_ok, meets=why is None, why_not=why))
        models[name] = model
        console.print(f"  {name}: {params:,} params, {flops / 1e6:.2f}M FLOPs, p50 {m.p50_ms:.3f} ms = "
                      f"{m.ratio:.3f} of the teacher's {m.teacher_p50_ms:.3f} ms ({1 / m.ratio:.2f}x faster), "
                      f"accuracy after pruning {acc:.2f}%{'' if why is None else f'; misses: {why}'}")
        return rows[-1]

    def smallest_ratio(depth: int, fits: Callable[[nn.Module], bool]) -> float | None:
        """The smallest share of channels removed at this depth whose pruned model `fits`: pruning and counting
        are cheap, timing is not. None when 85% cannot."""
        if fits(pruned(depth, 0.0, cfg.round_to)):
            return 0.0
        lo, hi = 0.0, SMALLEST
        if not fits(pruned(depth, hi, cfg.round_to)):
            return None
        for _ in range(6):  # to 0.015 of the ratio: finer than the timing can tell apart
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if fits(pruned(depth, mid, cfg.round_to)) else (mid, hi)
        return round(hi, 3)

    def ratio_for(depth: int, flops_goal: float) -> float | None:
        """The smallest share of channels removed that brings the candidate's FLOPs under `flops_goal` (a fraction
        of the teacher's)."""
        return smallest_ratio(depth, lambda m: count_flops(m, input_shape) <= flops_goal * t_flops)

    sized: dict[int, float | None] = {}

    def size_floor(depth: int) -> float | None:
        """The fewest channels removed at this depth that meet student.size / student.flops (0 without them): a
        latency target beside a size keeps every candidate under the size, rather than timing none."""
        if target_params is None and target_flops is None:
            return 0.0
        if depth not in sized:
            sized[depth] = smallest_ratio(depth, lambda m: (target_params is None or count_params(m) <= target_params)
                                          and (target_flops is None or count_flops(m, input_shape) <= target_flops))
        return sized[depth]

    # Each depth level: guess the FLOPs that meet the target from a line through the level's last two measured
    # (FLOPs, latency) points (the teacher's (1, 1) counts at level 0; with one point, latency proportional to
    # FLOPs, its factor carried over from the last level), time the width that has them, and guess again: a secant
    # search on measured latency, aiming a little under the target (verification measures again). Measurements are
    # noisy and latency is not monotone in FLOPs (odd channel counts run slower), so a guess is kept inside what
    # the level has measured (`_next_flops`). A level stops once a candidate meets the target within 20% (a larger
    # student would not), or after its share of the candidates (13 over the levels, three to six a level: three at
    # four levels, six when width alone is searched).
    per_level = max(3, min(6, (MAX_CANDIDATES - len(ROUND_TOS) - 1) // len(levels)))
    c = 1.0
    for depth in levels:
        floor = size_floor(depth)
        if floor is None or (not widths and floor > 0):  # this depth cannot meet the size target (in width)
            console.print(f"  depth {depth}: over the size target at every width searched, not timed")
            continue
        if not widths:
            try_one(depth, 0.0, cfg.round_to)
            continue
        points = [(1.0, 1.0)] if depth == 0 else []
        for _ in range(per_level):
            aim = AIM * target_ratio()
            goal = _next_flops(points, aim, c)
            ratio = ratio_for(depth, goal) if goal > 0 else None
            ratio = None if ratio is None else max(ratio, floor)
            if ratio is None:  # out of reach at this depth: the deepest level times its smallest student, the
                if depth == levels[-1]:  # closest latency the refusal names
                    try_one(depth, SMALLEST, cfg.round_to)
                break
            row = try_one(depth, ratio, cfg.round_to)
            if row is None or row.latency_ratio is None:
                break
            points.append((row.flops / t_flops, row.latency_ratio))
            c = row.latency_ratio / points[-1][0]
            if row.meets and row.latency_ratio >= 0.8 * target_ratio():
                break
    # the best so far at the round_to values the runtime's kernels block channels by (8 for AVX2, 16 for AVX-512)
    meeting = [r for r in rows if r.meets]
    if widths and meeting:
        best = max(meeting, key=lambda r: r.accuracy)
        depth = len(best.removed_blocks)
        for round_to in ROUND_TOS:
            if round_to != cfg.round_to:
                try_one(depth, best.width_ratio, round_to)
    best = _confirmed(rows, models, measure, misses)
    seconds = time.perf_counter() - started
    timed = [r for r in rows if r.p50_ms is not None]
    if best is None:
        raise UserError(_unreachable(cfg, timed, rows, seconds))
    rows = [r.model_copy(update={"chosen": r.name == best.name}) for r in rows]
    how = (f"widths by a secant search on measured latency, round_to {cfg.round_to} (and "
           f"{', '.join(str(r) for r in ROUND_TOS if r != cfg.round_to)} at the best)" if widths else "every channel kept")
    search = LatencySearch(
        target=cfg.latency, target_ms=cfg.latency_ms, batch=cfg.latency_batch, provider=measured[0].provider,
        threads=measured[0].threads, searched=f"{what}: {len(rows)} candidates ({len(timed)} timed), depth levels "
        f"{levels} of {len(ranked)} removable blocks, {how}",
        blocks=[RankedBlock(name=n, loss_rise=r) for n, r in ranked], candidates=rows, chosen=best.name,
        seconds=seconds, calibration_images=n_calib, accuracy_images=sum(len(y) for _, y in accuracy_batches),
        accuracy_on=accuracy_on)
    console.print(f"latency search: chose {best.name} ({1 / best.latency_ratio:.2f}x faster than the teacher at batch "
                  f"{cfg.latency_batch}, accuracy after pruning {best.accuracy:.2f}%) of {len(timed)} timed "
                  f"candidates in {seconds:.1f} s")
    return models[best.name], next(r for r in rows if r.chosen), search


def _next_flops(points: list[tuple[float, float]], aim: float, c: float) -> float:
    """The FLOPs (a fraction of the teacher's) to try next at one depth level, from its measured (FLOPs, latency
    ratio) points, aiming at the latency ratio `aim`.

    The secant through the last two points; with fewer, latency proportional to FLOPs (factor `c`). Measurements
    are noisy and latency is not monotone in FLOPs (odd channel counts run slower), and two close points can give
    a flat line whose guess lands anywhere (measured: 0.495 and 0.476 of the teacher's latency at 34 % and 17 % of
    its FLOPs sent the old search to its smallest candidate). So the guess is kept where the level's measurements
    say the target is: with a point fast enough (<= aim) and one too slow, strictly between them (else their
    middle); with only too slow ones, no lower than half the proportional guess from the fewest FLOPs too slow."""
    goal, secant = aim / c, None
    if len(points) >= 2 and points[-1][0] != points[-2][0]:
        (f0, r0), (f1, r1) = points[-2:]
        slope = (r1 - r0) / (f1 - f0)
        if slope > 0:
            secant = goal = f1 + (aim - r1) / slope
    fast = [f for f, r in points if r <= aim]
    slow = [(f, r) for f, r in points if r > aim]
    if not slow:
        return goal
    hi, r_hi = min(slow)
    if fast and max(fast) < hi:
        lo = max(fast)
        return goal if lo < goal < hi else (lo + hi) / 2
    if fast:  # a point with more FLOPs ran fast enough and one with fewer did not: noise; trust the line
        return goal
    proportional = aim * hi / r_hi
    return secant if secant is not None and proportional / 2 <= secant < hi else proportional


def _confirmed(rows: list[SearchCandidate], models: dict[str, nn.Module], measure, misses) -> SearchCandidate | None:
    """The most accurate candidate that meets the targets, timed once more (a neighbour's burst in one measurement
    does not choose the student): one that misses now is marked so and the next one is tried (at most three)."""
    for _ in range(3):
        meeting = [r for r in rows if r.meets]
        if not meeting:
            return None
        best = max(meeting, key=lambda r: (r.accuracy, -r.p50_ms))
        m = measure(models[best.name])
        why = misses(m.p50_ms, m.ratio)
        i = rows.index(best)
        console.print(f"  {best.name} timed again: {m.ratio:.3f} of the teacher's p50: "
                      + ("meets the target" if why is None else "misses it now, not chosen"))
        if why is None:
            rows[i] = best.model_copy(update={"latency_ratio_again": m.ratio})
            return rows[i]
        rows[i] = best.model_copy(update={"meets": False, "why_not": f"timed again: {why}",
                                          "latency_ratio_again": m.ratio})
    return None


def _unreachable(cfg, timed: list[SearchCandidate], rows: list[SearchCandidate], seconds: float) -> str:
    """The one line of a target no candidate meets: the closest latency measured, and as what."""
    key = "student.latency" if cfg.latency is not None else "student.latency_ms"
    asked = (f"{cfg.latency:g} of the teacher's p50 ({1 / cfg.latency:.2f}x faster)" if cfg.latency is not None
             else f"{cfg.latency_ms:g} ms")
    if not timed:
        why = "; ".join(sorted({r.why_not for r in rows if r.why_not})) or "none meets student.size / student.flops"
        return f"{key}: {asked} is out of reach: no candidate could be timed ({why})"
    fastest, parity = min(timed, key=lambda r: r.latency_ratio), sum(r.parity_ok is False for r in timed)
    also = f"; {parity} candidates failed PyTorch/ONNX parity" if parity else ""
    return (f"{key}: {asked} at batch {cfg.latency_batch} is out of reach: the fastest of {len(timed)} candidates "
            f"measured, {fastest.name} ({fastest.params:,} params), ran at {fastest.latency_ratio:.3f} of the "
            f"teacher's p50 ({fastest.p50_ms:.3f} ms vs {fastest.teacher_p50_ms:.3f} ms, onnxruntime, alternating "
            f"rounds; {seconds:.0f} s of search){also}")
