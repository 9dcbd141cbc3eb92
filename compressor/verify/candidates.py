"""Timing a latency search's candidates as verification times the student: each candidate is exported with the
run's exporter, checked for PyTorch / ONNX parity, and timed in onnxruntime (the recipe's provider and threads)
against the teacher in alternating rounds (verify.latency), at the target's batch size.

    timer = CandidateTimer(teacher, data, recipe, folder)      # exports and opens the teacher once
    measured = timer(candidate)                                # students.search.Measured
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from compressor.data.splits import DataBundle
from compressor.export.onnx import check_parity, export_onnx
from compressor.export.sessions import CPU, create_session
from compressor.recipe.schema import Recipe
from compressor.students.search import Measured
from compressor.verify import gates
from compressor.verify.latency import measure_latencies, speedups

# a candidate's timing: shorter than verification's (it is a ranking among candidates, each against the teacher
# in the same rounds), long enough that a 2-core machine's noise does not decide it
SEARCH_ROUNDS = 10  # short rounds, many: a neighbour's burst hits both models of neighbouring rounds alike
SEARCH_SECONDS = 0.5  # per model, over the rounds
SEARCH_RUNS = 30
PARITY_IMAGES = 16


class CandidateTimer:
    def __init__(self, teacher: nn.Module, data: DataBundle, recipe: Recipe, folder: Path):
        self.recipe, self.data, self.folder = recipe, data, Path(folder)
        self.batch = recipe.student.latency_batch
        self.shape = data.input_shape
        export_onnx(teacher, self.folder / "teacher.onnx", input_shape=self.shape, opset=recipe.export.opset)
        self.teacher = create_session(self.folder / "teacher.onnx", threads=recipe.verify.threads,
                                      device=recipe.device)
        split = data.val if data.val is not None and len(data.val) >= PARITY_IMAGES else data.train
        pick = torch.arange(min(PARITY_IMAGES, len(split)))
        self.images = data.normalize(torch.device("cpu"))(split.take(pick).images).contiguous()
        self.count = 0

    def __call__(self, model: nn.Module) -> Measured:
        self.count += 1
        path = self.folder / f"candidate{self.count}.onnx"
        export_onnx(model, path, input_shape=self.shape, opset=self.recipe.export.opset)
        session = create_session(path, threads=self.recipe.verify.threads, device=self.recipe.device)
        v = self.recipe.verify
        p = check_parity(model, path, self.images, batch_sizes=(1, min(8, len(self.images))),
                         session=session if session.provider == CPU else None)
        parity_ok = gates.parity("max_abs_diff", p["max_abs_diff"], p["scale"], v.max_abs_diff, v.parity_rtol).passed
        timed = measure_latencies({"teacher": self.teacher, "candidate": session}, [self.batch], self.shape,
                                  warmup=3, min_runs=SEARCH_RUNS, min_seconds=SEARCH_SECONDS,
                                  seed=self.recipe.seed, rounds=SEARCH_ROUNDS)
        b = str(self.batch)
        _, interval = speedups(timed["candidate"], timed["teacher"])  # candidate / teacher: a fraction
        # the median of the rounds' ratios: one round a neighbour slowed down does not decide a candidate
        rounds = [c / t for c, t in zip(timed["candidate"][b].round_p50_ms, timed["teacher"][b].round_p50_ms)]
        path.unlink(missing_ok=True)
        return Measured(p50_ms=timed["candidate"][b].p50_ms, teacher_p50_ms=timed["teacher"][b].p50_ms,
                        ratio=float(np.median(rounds)), interval=interval[b], max_abs_diff=p["max_abs_diff"], parity_ok=parity_ok,
                        provider=session.provider, threads=session.threads)
