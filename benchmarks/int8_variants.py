"""Which int8 variant pays on this CPU: QDQ vs QOperator, reduce_range on/off, for the demo's student and teacher.

    .venv/bin/python benchmarks/int8_variants.py runs/fashion_at --out docs/int8_2026-12-01.json

For each fp32 model of a finished `compress distill` run (student.onnx, teacher.onnx): static int8 with 512
stratified calibration images of the run's recipe data (per-channel weights), in each variant; accuracy on the
whole test split; latency at batch 1 and 64 on onnxruntime's CPU provider with the session's full graph
optimisation, timed against the fp32 file in 5 alternating rounds (the speed-up's interval is over rounds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compressor.core.device import cpu_has_vnni, environment  # noqa: E402
from compressor.data.transform import Normalize  # noqa: E402
from compressor.data.datasets import load_data  # noqa: E402
from compressor.data.splits import stratified_indices  # noqa: E402
from compressor.export.int8 import quantize_int8  # noqa: E402
from compressor.export.sessions import create_session  # noqa: E402
from compressor.recipe.load import validate_recipe  # noqa: E402
from compressor.verify.accuracy import onnx_split_accuracy  # noqa: E402
from compressor.verify.latency import measure_latencies, speedups  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    report = json.loads((args.run / "report.json").read_text())
    ck = torch.load(args.run / "student.pt", weights_only=True)
    recipe = validate_recipe(ck["recipe"], "student.pt")
    data = load_data(recipe.data, recipe.seed)
    pick = stratified_indices(data.train.labels, 512, recipe.seed)
    calib = Normalize(data.mean, data.std, torch.device("cpu"))(data.train.take(pick).images).contiguous()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for model in ("student", "teacher"):
            fp32 = args.run / f"{model}.onnx"
            base = create_session(fp32, threads=args.threads, device="cpu")
            fp32_acc = onnx_split_accuracy(base, data.test, data)
            for fmt in ("qdq", "qoperator"):
                for reduce in (False, True):
                    path = Path(work) / f"{model}-{fmt}-{int(reduce)}.onnx"
                    quantize_int8(fp32, path, calib, reduce_range=reduce, quant_format=fmt)
                    sess = create_session(path, threads=args.threads, device="cpu")
                    acc = onnx_split_accuracy(sess, data.test, data)
                    timed = measure_latencies({"fp32": base, "int8": sess}, [1, 64], data.input_shape, warmup=10,
                                              min_runs=100, min_seconds=2.0, rounds=5)
                    ratio, interval = speedups(timed["fp32"], timed["int8"])
                    row = {"model": model, "format": fmt, "reduce_range": reduce, "accuracy": acc,
                           "fp32_accuracy": fp32_acc,
                           "p50_ms": {b: timed["int8"][b].p50_ms for b in ratio},
                           "fp32_p50_ms": {b: timed["fp32"][b].p50_ms for b in ratio},
                           "speedup_vs_fp32": ratio, "speedup_interval": interval}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    cpu = environment(torch.device("cpu"))["cpu"]
    result = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu, "vnni": cpu_has_vnni(), "threads": args.threads,
              "student_params": report["student"]["params"], "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
