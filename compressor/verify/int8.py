"""Whether the int8 model ships: quantise the fp32 student, measure its accuracy and speed beside fp32 on the same
provider, and decide (verify.gates.int8_ships)."""

from __future__ import annotations

from pathlib import Path

import torch

from compressor.core.progress import console
from compressor.data.splits import DataBundle, stratified_indices
from compressor.export.int8 import quantize_int8
from compressor.export.sessions import CPU, create_session
from compressor.recipe.schema import Recipe
from compressor.verify import gates
from compressor.verify.accuracy import onnx_split_accuracy
from compressor.verify.latency import measure_latencies, speedups
from compressor.verify.results import Int8

CALIBRATION_IMAGES = 512


def check_int8(fp32_path: Path, int8_path: Path, data: DataBundle, recipe: Recipe, t_acc: float, sessions: dict,
               batch: int = 256) -> Int8:
    """Quantise, measure beside fp32, and say which variant ships: int8 only if it passes the gates and wins.

    int8 runs on onnxruntime's CPU provider, so it is timed against fp32 teacher and student on the CPU provider
    too (the recipe's sessions when they are CPU ones, else CPU sessions of the same files), in alternating
    rounds (gates.int8_ships decides). student.onnx stays the fp32 model (its parity with PyTorch is what
    `max_abs_diff` proves); the int8 file sits beside it and the report's `shipped` names the one to deploy.
    """
    v = recipe.verify
    pick = stratified_indices(data.train.labels, CALIBRATION_IMAGES, recipe.seed)
    normalize = data.normalize(torch.device("cpu"))
    calib = (normalize(x).contiguous() for x, _ in data.train.take_batches(pick, 64, recipe.data.workers))
    console.print(f"quantising to int8 (static {recipe.export.int8_format}, {len(pick)} calibration images) ...")
    info = quantize_int8(fp32_path, int8_path, calib, quant_format=recipe.export.int8_format)
    cpu = {role: s if s.provider == CPU else create_session(s.path, threads=v.threads, device="cpu")
           for role, s in sessions.items()}
    cpu["int8"] = create_session(int8_path, threads=v.threads, device="cpu")
    acc = onnx_split_accuracy(cpu["int8"], data.test, data, batch)
    timed = measure_latencies(cpu, v.batch_sizes, data.input_shape, warmup=v.warmup, min_runs=v.min_runs,
                              min_seconds=v.min_seconds, seed=recipe.seed, rounds=v.rounds)
    vs_teacher, _ = speedups(timed["teacher"], timed["int8"])
    vs_fp32, vs_fp32_interval = speedups(timed["student"], timed["int8"])
    own = [*gates.accuracy_drop(t_acc, acc, v.max_accuracy_drop),
           *gates.latency_gates(v, vs_teacher, {b: s.p50_ms for b, s in timed["int8"].items()})]
    ship, why = gates.int8_ships(own, vs_fp32, vs_fp32_interval)
    return Int8(**info, accuracy=acc, provider=CPU, latency=timed["int8"], fp32_latency=timed["student"],
                speedup=vs_teacher, speedup_vs_fp32=vs_fp32, speedup_vs_fp32_interval=vs_fp32_interval, gates=own,
                ship=ship, decision=why)
