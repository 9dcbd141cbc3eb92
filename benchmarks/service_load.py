"""The job service under load, on PostgreSQL + S3 and a Ray cluster (docs/BENCHMARKS.md, "The job service under
load"): JOBS tiny jobs submitted by CLIENTS concurrent clients to two `compress serve` sharing one PostgreSQL, one
S3 API server (moto's standalone server) and one Ray cluster (`ray start --head`), each submit sent twice with the
same idempotency key (the second time to the other server: a client retrying through a load balancer). While the
jobs run, every client polls its jobs' status; the API's latency for those calls and the jobs per minute are
measured, and every job is checked: final, none lost, none run twice.

    .venv/bin/python benchmarks/service_load.py [--jobs 50] [--clients 10] [--cpus 2]

Needs what `make test` installs (PostgreSQL's initdb, moto); everything listens on 127.0.0.1 except Ray's own
ports, which Ray binds as a cluster does. Prints one JSON line at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPE = """\
name: load
seed: {seed}
device: cpu
data: {{name: fashion_mnist, limit_train: 128, limit_test: 100}}
teacher: {{arch: wrn-10-1}}
student: {{arch: wrn-10-1}}
train: {{epochs: 1, batch_size: 32, lr: 0.05}}
verify: {{batch_sizes: [1], min_runs: 10, min_seconds: 0, warmup: 2, rounds: 2, max_accuracy_drop: null,
          min_speedup: null}}
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the Ray head (each job asks for 1)")
    args = ap.parse_args()
    import httpx

    from benchmarks.service_overhead import teacher
    from tests.service_backends import S3_ENV
    from tests.test_service_cluster import Cluster

    os.environ.update(S3_ENV)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"service-load-{os.getpid()}"
    work.mkdir(parents=True)
    teacher(work / "teacher.pt")

    cluster = Cluster(work / "teacher.pt", head_cpus=args.cpus)
    try:
        a, b = cluster.server("a"), cluster.server("b")
        urls = [a.url, b.url]
        headers = {"Authorization": f"Bearer {cluster.token}"}
        sha = hashlib.sha256((work / "teacher.pt").read_bytes()).hexdigest()
        r = httpx.put(f"{a.url}/v1/teachers/{sha}", content=(work / "teacher.pt").read_bytes(), headers=headers)
        assert r.status_code in (200, 201), r.text
        submit_ms, status_ms, status_while_running_ms, ids, errors = [], [], [], {}, []
        running_now = threading.Event()
        keys = [f"load-{i}" for i in range(args.jobs)]
        started = time.monotonic()

        def client(n: int) -> None:
            http = httpx.Client(headers=headers, timeout=60)
            mine = keys[n::args.clients]
            try:
                for i, key in enumerate(mine):
                    body = {"teacher_sha256": sha, "recipe": RECIPE.format(seed=n), "idempotency_key": key}
                    got = set()
                    for url in (urls[(n + i) % 2], urls[(n + i + 1) % 2]):  # the retry goes to the other server
                        t = time.monotonic()
                        resp = http.post(url + "/v1/jobs", json=body)
                        submit_ms.append((time.monotonic() - t) * 1000)
                        assert resp.status_code in (200, 201), resp.text
                        got.add(resp.json()["id"])
                    assert len(got) == 1, got
                    ids[key] = got.pop()
                pending = {ids[k] for k in mine}
                while pending:
                    for job_id in list(pending):
                        t = time.monotonic()
                        resp = http.get(f"{urls[n % 2]}/v1/jobs/{job_id}")
                        ms = (time.monotonic() - t) * 1000
                        status_ms.append(ms)
                        job = resp.json()
                        if job["state"] == "running":
                            running_now.set()
                        if running_now.is_set():
                            status_while_running_ms.append(ms)
                        if job["finished"]:
                            pending.discard(job_id)
                    time.sleep(0.5)
            except Exception as e:
                errors.append(repr(e))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - started
        http = httpx.Client(headers=headers, timeout=60)
        jobs = [http.get(f"{a.url}/v1/jobs/{ids[k]}").json() for k in keys if k in ids]
        listed = http.get(f"{a.url}/v1/jobs", params={"limit": 1000}).json()
        once = [len(cluster.attempts(j["id"])) == 1 and j["attempts"] == 1 for j in jobs]
        ran = [(dt.datetime.fromisoformat(a["ended_at"]) - dt.datetime.fromisoformat(a["started_at"])).total_seconds()
               for j in jobs for a in j["attempt_history"] if a["ended_at"]]
        summary = {
            "jobs": args.jobs, "clients": args.clients, "head_cpus": args.cpus, "errors": errors,
            "distinct_jobs": len(set(ids.values())), "jobs_listed": len([j for j in listed if j["recipe_name"] == "load"]),
            "states": {s: sum(j["state"] == s for j in jobs) for s in {j["state"] for j in jobs}},
            "all_final": all(j["finished"] for j in jobs), "run_once": sum(once),
            "wall_s": round(wall, 1), "jobs_per_minute": round(len(jobs) / wall * 60, 2),
            "job_run_s": {"p50": round(percentile(ran, 0.5), 1), "max": round(max(ran), 1)} if ran else None,
            "submit_ms": {"n": len(submit_ms), "p50": round(percentile(submit_ms, 0.5), 1),
                          "p99": round(percentile(submit_ms, 0.99), 1)},
            "status_ms_while_running": {"n": len(status_while_running_ms),
                                        "p50": round(percentile(status_while_running_ms, 0.5), 1),
                                        "p99": round(percentile(status_while_running_ms, 0.99), 1),
                                        "mean": round(statistics.mean(status_while_running_ms), 1)},
            "cpu": subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                                  capture_output=True, text=True).stdout.strip(),
            "cpus": os.cpu_count(), "load_average_after": os.getloadavg(),
        }
        print(json.dumps(summary))
        ok = (not errors and summary["distinct_jobs"] == args.jobs and summary["jobs_listed"] == args.jobs
              and summary["all_final"] and summary["run_once"] == args.jobs)
        if not ok:
            raise SystemExit("the load run lost or repeated a job (see the JSON line)")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
