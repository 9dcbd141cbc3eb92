"""Inference latency of the teacher and the student: onnxruntime next to PyTorch eager, in one run.

    .venv/bin/python benchmarks/latency.py                       # random-init WRN-16-2 and WRN-16-1, 1x28x28
    .venv/bin/python benchmarks/latency.py --quick               # short runs (a smoke check, not figures)
    .venv/bin/python benchmarks/latency.py --teacher runs/fashion_at/teacher.pt --student runs/fashion_at/student.pt

Each model is exported with compressor.export (the file `compress distill` ships) and opened with
compressor.export.sessions (the session `compress verify` times); the same seeded random inputs go to onnxruntime and to
the PyTorch module (eval, inference_mode, fp32, contiguous), both with the same number of intra-op threads. Per
model, backend and batch size: p50 / p90 / mean in ms and images/s from the p50, by the same rule as
verify.latency.measure_latency (warm-up, then at least --min-runs calls and --min-seconds). The measurements alternate
model by model in one process, eager before onnxruntime. A table goes to stderr; the last line of stdout is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from compressor.core.device import environment
from compressor.core.errors import CompressorError
from compressor.export.onnx import export_onnx
from compressor.export.sessions import create_session
from compressor.models import create_model
from compressor.models.checkpoint import load_model
from compressor.verify.latency import latency_meta, measure_latency


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", type=Path, help="compressor checkpoint (default: random-init wrn-16-2)")
    p.add_argument("--student", type=Path, help="compressor checkpoint (default: random-init wrn-16-1)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--min-runs", type=int, default=100)
    p.add_argument("--min-seconds", type=float, default=1.0)
    p.add_argument("--quick", action="store_true", help="warm-up 3, 20 runs, 0.2 s")
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.min_runs, args.min_seconds = 3, 20, 0.2
    return args


def load(path: Path | None, arch: str) -> tuple[torch.nn.Module, str, tuple[int, int, int]]:
    if path is None:
        torch.manual_seed(0)
        return create_model(arch, 10, 1).eval(), f"{arch} (random init)", (1, 28, 28)
    model, ck = load_model(path)
    return model, f"{ck['arch']} ({path})", tuple(ck["input_shape"])


def eager_latency(model: torch.nn.Module, batch_sizes, input_shape, *, warmup: int, min_runs: int,
                  min_seconds: float, seed: int = 0) -> dict[str, dict]:
    """verify.latency.measure_latency's rule and inputs, for the PyTorch module itself."""
    rng = np.random.default_rng(seed)
    out = {}
    with torch.inference_mode():
        for b in batch_sizes:
            x = torch.from_numpy(rng.standard_normal((b, *input_shape), dtype=np.float32))  # (B, C, H, W)
            for _ in range(warmup):
                model(x)
            times, start = [], time.perf_counter()
            while len(times) < min_runs or time.perf_counter() - start < min_seconds:
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
            ms = np.array(times) * 1000.0
            p50, p90 = np.percentile(ms, [50, 90])
            out[str(b)] = {"p50_ms": float(p50), "p90_ms": float(p90), "mean_ms": float(ms.mean()), "runs": len(ms),
                           "throughput": float(b / (p50 / 1000.0))}
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    results, meta = {}, None
    try:
        with tempfile.TemporaryDirectory(prefix="latency-bench-") as tmp:
            for role, path, arch in (("teacher", args.teacher, "wrn-16-2"), ("student", args.student, "wrn-16-1")):
                model, name, shape = load(path, arch)
                onnx_path = Path(tmp) / f"{role}.onnx"
                export_onnx(model, onnx_path, input_shape=shape)
                timing = dict(warmup=args.warmup, min_runs=args.min_runs, min_seconds=args.min_seconds)
                # eager first, then onnxruntime, whose pool threads spin for a while after each run and would
                # take a core from PyTorch's threads if they came second; the session is closed before the next
                eager = eager_latency(model, args.batch_sizes, shape, **timing)
                session = create_session(onnx_path, threads=args.threads, device="cpu")
                meta = latency_meta(session)
                ort_latency = measure_latency(session, args.batch_sizes, shape, **timing)
                results[role] = {"model": name, "onnxruntime": {b: st.model_dump() for b, st in ort_latency.items()},
                                 "pytorch_eager": eager}
                del session
    except CompressorError as e:
        for problem in e.problems:
            print(f"error: {problem}", file=sys.stderr)
        return e.exit_code
    print(f"{'model':8} {'batch':>5} {'ORT p50 ms':>11} {'eager p50 ms':>13} {'eager/ORT':>9}", file=sys.stderr)
    for role, r in results.items():
        for b in map(str, args.batch_sizes):
            o, e = r["onnxruntime"][b]["p50_ms"], r["pytorch_eager"][b]["p50_ms"]
            print(f"{role:8} {b:>5} {o:11.3f} {e:13.3f} {e / o:9.2f}", file=sys.stderr)
    env = environment(torch.device("cpu"))
    speedup = {b: results["teacher"]["onnxruntime"][b]["p50_ms"] / results["student"]["onnxruntime"][b]["p50_ms"]
               for b in map(str, args.batch_sizes)}
    print(json.dumps({
        "benchmark": "latency",
        **results,
        "student_speedup_onnxruntime": speedup,
        "threads": args.threads,
        "onnxruntime_session": meta,
        "timing": {"warmup": args.warmup, "min_runs": args.min_runs, "min_seconds": args.min_seconds},
        "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "cpu": env["cpu"],
        "cpu_count": env["cpu_count"],
        "versions": {"python": env["python"], "torch": env["torch"], "onnxruntime": env["onnxruntime"]},
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
