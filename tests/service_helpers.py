"""What the service's tests share: a real `compress serve` on a free loopback port (its own session, so what it
leaves behind can be ended by process group), tokens made by the real CLI, tiny jobs, and polling helpers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from .conftest import ROOT, run_cli
from .service_backends import free_port  # noqa: F401  (not one of the ports a Ray node takes)

# a tiny job: a few hundred Fashion-MNIST images, one epoch, the smallest WRN student, short latency runs
TINY = """\
name: tiny
seed: {seed}
device: cpu
data: {{name: fashion_mnist, limit_train: {limit}, limit_test: 100}}
teacher: {{arch: wrn-10-1}}
student: {{arch: wrn-10-1}}
train: {{epochs: 1, batch_size: 32, lr: 0.05{extra_train}}}
verify: {{batch_sizes: [1], min_runs: 10, min_seconds: 0, warmup: 2, rounds: 2, max_accuracy_drop: null,
          min_speedup: {min_speedup}, threads: 1}}
"""


def tiny_recipe(seed: int = 0, limit: int = 128, min_speedup: str = "null", checkpoint_every: int | None = None) -> str:
    extra = f", checkpoint_every: {checkpoint_every}" if checkpoint_every else ""
    return TINY.format(seed=seed, limit=limit, min_speedup=min_speedup, extra_train=extra)




def service_env(home: Path) -> dict:
    return {**os.environ, "COMPRESSOR_HOME": str(home), "COMPRESSOR_DATA": str(ROOT / "data"), "COLUMNS": "200",
            "COMPRESSOR_CPU_BF16": "0", "RAY_AUTH_MODE": "token"}


class Server:
    """`compress serve` in a subprocess, listening on 127.0.0.1 only."""

    def __init__(self, home: Path, port: int | None = None, *args: str, env: dict | None = None):
        self.home, self.port, self.args, self.env = home, port or free_port(), args, env or {}
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 120) -> Server:
        exe = Path(sys.executable).with_name("compress")
        self.log = tempfile.NamedTemporaryFile("w+", prefix="serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--home", str(self.home), *self.args], stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**service_env(self.home), **self.env}, cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as http:  # one client: each new one builds an SSL context (~30 ms of CPU)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    pytest.fail(f"compress serve exited {self.proc.returncode}:\n{self.output()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(self.url + "/v1/health").status_code == 200:
                        return self
                time.sleep(0.3)
        self.stop()
        pytest.fail(f"compress serve did not answer in {timeout} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM (the graceful stop), then whatever is left of its process group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.end_group()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def end_group(self) -> None:
        """Processes of this server's session that outlived it (Ray's agents after a kill -9)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def make_token(home: Path, name: str, admin: bool = False) -> str:
    r = run_cli("serve", "token", "create", name, "--home", home, *(["--admin"] if admin else []),
                env={"COMPRESSOR_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("cmp_") and len(token.splitlines()) == 1
    return token


class Api:
    """httpx against the server with one token."""

    def __init__(self, url: str, token: str | None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=60)

    def upload(self, path: Path) -> str:
        import hashlib

        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        r = self.http.put(f"/v1/teachers/{sha}", params={"filename": path.name}, content=path.read_bytes())
        assert r.status_code in (200, 201), r.text
        return sha

    def submit(self, sha: str, recipe: str, overrides=(), key: str | None = None, **fields) -> dict:
        r = self.http.post("/v1/jobs", json={"teacher_sha256": sha, "recipe": recipe, "overrides": list(overrides),
                                             "idempotency_key": key, **fields})
        assert r.status_code in (200, 201), r.text
        return r.json()

    def job(self, job_id: str) -> dict:
        r = self.http.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, job_id: str, until=lambda j: j["finished"], timeout: float = 420, every: float = 0.2,
             seen: list | None = None) -> dict:
        """Poll the job until `until(job)`; `seen` collects every (state, reason) observed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if seen is not None and (job["state"], job["reason"]) not in seen:
                seen.append((job["state"], job["reason"]))
            if until(job):
                return job
            if job["finished"]:
                log = self.http.get(f"/v1/jobs/{job_id}/log").text
                pytest.fail(f"job {job_id} ended {job['state']} ({job['reason']}) before the awaited moment:\n"
                            f"{log[-3000:]}")
            time.sleep(every)
        log = self.http.get(f"/v1/jobs/{job_id}/log").text
        pytest.fail(f"timed out waiting for job {job_id}: {self.job(job_id)['reason']}\n{log[-3000:]}")


def attempts_of(home: Path, job_id: str) -> list[dict]:
    """The job's attempts.jsonl: one line per time a worker started it (attempt, resume, state_existed, pid)."""
    from compressor.core.fileio import read_jsonl

    return read_jsonl(home / "jobs" / job_id / "attempts.jsonl")


def student_weights(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
