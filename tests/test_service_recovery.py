"""Lost work and double work, the two complaints about job services: kill -9 of the Ray worker running a job
mid-epoch, then kill -9 of the server with one job running and two queued. A real `compress serve` with a
one-CPU local Ray (one job at a time), the same tiny recipe and seed for every job, so every student must come out
bit-identical: the resumed ones too (the CPU resume is bit-identical)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from .service_helpers import Api, Server, attempts_of, make_token, same_weights, student_weights, tiny_recipe
from .test_resume import saved_position

# ~1,800 training images in batches of 32: 58 steps, a checkpoint every 4th step
RECIPE = tiny_recipe(seed=3, limit=2048, checkpoint_every=4)


def mid_epoch(home, job_id: str) -> bool:
    position = saved_position(home / "jobs" / job_id / "out" / "train_state.pt")
    return position is not None and position[0] == 0 and position[1] > 0


def gone(pid: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("recovery-home")


def test_worker_and_server_killed_lose_nothing_and_run_nothing_twice(home, small_teacher):
    token = make_token(home, "ci")
    server = Server(home, None, "--ray-cpus", "1").start()
    try:
        api = Api(server.url, token)
        sha = api.upload(small_teacher)

        # 1. kill -9 of the worker process mid-epoch: the job finishes on attempt 2, from its checkpoint
        k = api.submit(sha, RECIPE, key="killed-worker")["id"]
        running = api.wait(k, until=lambda j: j["attempt_history"] and j["attempt_history"][-1]["pid"]
                           and mid_epoch(home, k), every=0.05)
        pid = running["attempt_history"][-1]["pid"]
        while True:  # freeze it, and kill it only if the saved state is still mid-epoch (else let it go on)
            os.kill(pid, signal.SIGSTOP)
            if mid_epoch(home, k):
                killed_at = saved_position(home / "jobs" / k / "out" / "train_state.pt")
                os.kill(pid, signal.SIGKILL)
                break
            os.kill(pid, signal.SIGCONT)
            api.wait(k, until=lambda j: mid_epoch(home, k), every=0.05)
        job = api.wait(k)
        assert job["state"] == "succeeded", job
        assert job["attempts"] == 2 and [a["outcome"] for a in job["attempt_history"]] == ["died", "succeeded"]
        assert job["attempt_history"][1]["resume"] is True
        report = api.http.get(f"/v1/jobs/{k}/report").json()
        assert report["distillation"]["resumed_from_epoch"] == 1 and killed_at[1] > 0
        lines = attempts_of(home, k)
        assert [(a["attempt"], a["state_existed"]) for a in lines] == [(1, False), (2, True)]

        # 2. kill -9 of the server with a job running (past a checkpoint) and two queued
        x, y, z = (api.submit(sha, RECIPE, key=f"restart-{n}")["id"] for n in "xyz")
        api.wait(x, until=lambda j: mid_epoch(home, x), every=0.05)
        queued = api.job(y)
        assert queued["state"] == "queued" and queued["reason"].startswith("waiting for a worker"), queued
        worker = attempts_of(home, x)[-1]["pid"]
        server.kill9()
        assert gone(worker), "the Ray worker outlived its killed server"
        server.end_group()  # Ray's agents that outlive a kill -9 of their parent
    finally:
        server.stop()

    server = Server(home, None, "--ray-cpus", "1").start()  # the same home: the same store, the same jobs
    try:
        api = Api(server.url, token)
        ended = {j: api.wait(j) for j in (x, y, z)}
        assert all(job["state"] == "succeeded" for job in ended.values()), ended
        assert [a["outcome"] for a in ended[x]["attempt_history"]] == ["lost", "succeeded"]
        assert ended[y]["attempts"] == ended[z]["attempts"] == 1
        # none ran twice: one training from scratch per job, and x's second attempt resumed from its state
        trainings = {j: [a["state_existed"] for a in attempts_of(home, j)] for j in (k, x, y, z)}
        assert trainings == {k: [False, True], x: [False, True], y: [False], z: [False]}
        # and every student is the one an uninterrupted run makes (y, z were never interrupted)
        weights = {j: student_weights(home / "jobs" / j / "out" / "student.pt") for j in (k, x, y, z)}
        for j in (k, x, z):
            assert same_weights(weights[j], weights[y]), j
    finally:
        server.stop()
