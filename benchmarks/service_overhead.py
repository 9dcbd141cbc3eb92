"""The service's overhead: a tiny job through `compress submit` against the same `compress distill` run locally,
on one machine in one run (docs/BENCHMARKS.md, "The job service's overhead").

    .venv/bin/python benchmarks/service_overhead.py [--rounds 3] [--limit 256]

Starts `compress serve` on a free loopback port with a scratch home (a local Ray with this machine's CPUs, each job
asking for all of them, so the job trains with the threads a local run has), then alternates local and served
runs of the same recipe and seed. For each run: the wall time of the command (the submit's includes upload,
queueing, the Ray worker, the download), and the time from the command's start to the first training step (local:
the process's start-up before distill() plus distill's own `first_step_seconds`; served: the worker's recorded
start of the attempt plus the same). The first served run is cold (teacher upload, a new Ray worker that imports
torch); the others find the teacher on the server and a warm worker. Prints one JSON line at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RECIPE = """\
name: overhead
seed: 0
device: cpu
data: {{name: fashion_mnist, limit_train: {limit}, limit_test: 100}}
teacher: {{arch: wrn-10-1}}
student: {{arch: wrn-10-1}}
train: {{epochs: 1, batch_size: 32, lr: 0.05}}
verify: {{batch_sizes: [1], min_runs: 10, min_seconds: 0, warmup: 2, rounds: 2, max_accuracy_drop: null,
          min_speedup: null}}
"""


def teacher(path: Path) -> None:
    import torch

    from compressor.data.datasets import NORMALISATION
    from compressor.models import checkpoint as ckpt_io
    from compressor.models import create_model

    torch.manual_seed(0)
    mean, std = NORMALISATION["fashion_mnist"]
    classes = [str(i) for i in range(10)]
    ck = ckpt_io.model_checkpoint(create_model("wrn-10-1", 10, 1), arch="wrn-10-1", classes=classes,
                                  input_shape=(1, 28, 28), mean=mean, std=std, dataset="fashion_mnist", kind="teacher")
    ckpt_io.save(ck, path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(cmd: list[str], env: dict, cwd: Path) -> tuple[float, float]:
    started = time.time()
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr[-3000:]}")
    return started, time.time() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=256)
    args = ap.parse_args()
    import httpx

    work = Path(tempfile.mkdtemp(prefix="service-overhead-"))
    home, cpus = work / "home", os.cpu_count()
    env = {**os.environ, "COMPRESSOR_DATA": str(ROOT / "data"), "COMPRESSOR_HOME": str(home),
           "COMPRESSOR_CPU_BF16": "0", "RAY_AUTH_MODE": "token"}
    teacher(work / "teacher.pt")
    (work / "r.yaml").write_text(RECIPE.format(limit=args.limit))
    token = subprocess.run([str(BIN / "compress"), "serve", "token", "create", "bench", "--home", str(home)], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(BIN / "compress"), "serve", "--port", str(port), "--home", str(home),
                               "--ray-cpus", str(cpus), "--cpus-per-job", str(cpus)], env=env,
                              stdout=open(work / "serve.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        env["COMPRESSOR_TOKEN"] = token
        local, served = [], []
        for i in range(args.rounds):
            out = work / f"local{i}"
            started, wall = timed([str(BIN / "compress"), "distill", "teacher.pt", "--recipe", "r.yaml", "--out",
                                   str(out)], env, work)
            report = json.loads((out / "report.json").read_text())
            startup = wall - report["wall_seconds"]
            local.append({"wall_s": wall, "to_first_step_s": startup + report["distillation"]["first_step_seconds"],
                          "distill_wall_s": report["wall_seconds"]})
            out = work / f"served{i}"
            started, wall = timed([str(BIN / "compress"), "submit", "teacher.pt", "--recipe", "r.yaml", "--server",
                                   url, "--out", str(out)], env, work)
            report = json.loads((out / "report.json").read_text())
            jobs = httpx.get(url + "/v1/jobs", headers={"Authorization": f"Bearer {token}"}).json()
            attempt = [json.loads(line) for line in (home / "jobs" / jobs[0]["id"] / "attempts.jsonl").read_text()
                       .splitlines()][-1]
            first = attempt["started_unix"] + report["distillation"]["first_step_seconds"]
            served.append({"wall_s": wall, "to_first_step_s": first - started,
                           "train_seconds": report["distillation"]["train_seconds"],
                           "distill_wall_s": report["wall_seconds"], "around_distill_s": wall - report["wall_seconds"]})
            local[-1]["train_seconds"] = json.loads((work / f"local{i}" / "report.json").read_text())[
                "distillation"]["train_seconds"]
            same = (work / f"local{i}" / "student.onnx").read_bytes() == (out / "student.onnx").read_bytes()
            served[-1]["student_onnx_equal_to_local"] = same
            print(f"round {i + 1}: local {local[-1]['wall_s']:.1f} s (first step at {local[-1]['to_first_step_s']:.1f}"
                  f" s), submit {wall:.1f} s (first step at {served[-1]['to_first_step_s']:.1f} s), same ONNX: {same}",
                  flush=True)
    finally:
        server.terminate()
        server.wait(60)
    warm = served[1:] or served
    summary = {
        "cpu": subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True,
                              text=True).stdout.strip(), "cpus": cpus, "load_average": os.getloadavg(),
        "limit_train": args.limit, "local": local, "served": served,
        "local_wall_median_s": statistics.median(r["wall_s"] for r in local),
        "served_cold_wall_s": served[0]["wall_s"],
        "served_warm_wall_median_s": statistics.median(r["wall_s"] for r in warm),
        "local_first_step_median_s": statistics.median(r["to_first_step_s"] for r in local),
        "served_cold_first_step_s": served[0]["to_first_step_s"],
        "served_warm_first_step_median_s": statistics.median(r["to_first_step_s"] for r in warm),
        "teacher_sha256": hashlib.sha256((work / "teacher.pt").read_bytes()).hexdigest()[:16],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
