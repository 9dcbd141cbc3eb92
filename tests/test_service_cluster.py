"""The service beyond one machine, on one machine: a real Ray cluster started with `ray start` (a head, then
worker nodes with a custom resource), a real PostgreSQL as the shared job store, moto's standalone S3 server as
the artifact store, and `compress serve` processes joined to the cluster. Every node works in its own scratch
folder: what one node saved reaches another only through the store.

1. Placement and failover: a job of worker kind `edge` runs on the `edge` node; kill -9 of that node's raylet
   mid-epoch -> the job waits, queued, saying no node has `edge`; a new `edge` node joins -> the job resumes there
   from the checkpoint in the store and its student equals an uninterrupted run's, bit for bit.
2. What no node has waits, queued, with the reason (a worker kind, a GPU), and a token's queue is bounded.
3. Two servers on one PostgreSQL, a rolling restart under a small load (clients repeating idempotency keys to
   both servers): every job ends, none lost, none run twice, every student the same.
Ray replaces 127.0.0.1 by the machine's own address for `ray start` nodes (by design, so other machines can
join); the service, PostgreSQL and S3 listen on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from .conftest import run_cli
from .service_backends import S3_ENV, Postgres, RayNode, S3Server, free_port, wait_for_nodes
from .service_helpers import Api, Server, same_weights, tiny_recipe
from .test_resume import saved_position

FAILOVER = tiny_recipe(seed=3, limit=2048, checkpoint_every=4)  # 58 steps, a checkpoint every 4th
LOAD = tiny_recipe(seed=7, limit=384, checkpoint_every=2).replace("name: tiny", "name: load")


class Cluster:
    def __init__(self, small_teacher: Path, head_cpus: int = 2):
        self.root = Path(tempfile.mkdtemp(prefix="cc-"))  # short: Ray's socket paths have a length limit
        self.pg, self.s3, self.nodes, self.servers = Postgres(), S3Server(), {}, {}
        try:
            self._start(small_teacher, head_cpus)
        except BaseException:  # what did start is ended: no fixture teardown runs for a fixture that failed
            self.stop()
            raise

    def _start(self, small_teacher: Path, head_cpus: int) -> None:
        self.pg.start(), self.s3.start()
        token_file = self.root / "ray_token"
        token_file.write_text(secrets.token_hex(32))
        token_file.chmod(0o600)
        self.env = {**os.environ, **S3_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file),
                    "COMPRESSOR_DATA": str(Path(__file__).resolve().parents[1] / "data"), "COMPRESSOR_CPU_BF16": "0",
                    # a node whose raylet died is declared dead in ~3 s rather than ~30 s
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                    "RAY_health_check_failure_threshold": "3"}
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.nodes["head"] = RayNode(self.root, "head", self.node_env("head"), head_port=port, cpus=head_cpus).start()
        self.db, self.bucket = self.pg.create(), self.s3.bucket() + "/compressor"
        wait_for_nodes(self.address, self.env, ["head"], log_dir=self.root)
        self.token = self.make_token("ci")
        self.teacher = small_teacher

    def node_env(self, name: str) -> dict:
        return {**self.env, "COMPRESSOR_SCRATCH": str(self.root / f"scratch-{name}")}

    def add_node(self, name: str, **resources) -> RayNode:
        node = RayNode(self.root, name, self.node_env(name), address=self.address, resources=resources).start()
        self.nodes[name] = node
        wait_for_nodes(self.address, self.env, [name], log_dir=self.root)
        return node

    def make_token(self, name: str, *flags: str) -> str:
        r = run_cli("serve", "token", "create", name, "--home", self.root / "token-home", "--db", self.db, *flags)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def server(self, name: str) -> Server:
        home = self.root / f"home-{name}"
        server = Server(home, None, "--db", self.db, "--artifacts", self.bucket, "--artifacts-endpoint",
                        self.s3.endpoint, "--ray-address", self.address, "--lease-seconds", "6", env=self.env)
        self.servers[name] = server.start()
        return server

    def stored(self, job_id: str, name: str) -> bytes | None:
        from compressor.service.artifacts import Artifacts, store_options

        store = Artifacts(self.bucket, store_options(self.bucket, self.s3.endpoint))
        return store.read_bytes(store.job_key(job_id, name))

    def attempts(self, job_id: str) -> list[dict]:
        return [json.loads(line) for line in (self.stored(job_id, "attempts.jsonl") or b"").decode().splitlines()]

    def stop(self) -> None:
        """Everything this cluster started, each part ended even when another part's stop fails."""
        parts = [*self.servers.values(), *reversed(list(self.nodes.values())), self.pg, self.s3]
        problems = []
        for part in parts:
            try:
                part.stop()
            except Exception as e:  # pragma: no cover - reported after the rest is stopped
                problems.append(repr(e))
        shutil.rmtree(self.root, ignore_errors=True)
        assert not problems, problems


@pytest.fixture(scope="module")
def cluster(small_teacher):
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    c = Cluster(small_teacher)
    try:
        yield c
    finally:
        c.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _mid_epoch(cluster: Cluster, job_id: str, tmp: Path) -> tuple | None:
    data = cluster.stored(job_id, "out/train_state.pt")
    if data is None:
        return None
    (tmp / "state.pt").write_bytes(data)
    position = saved_position(tmp / "state.pt")
    return position if position is not None and position[0] == 0 and position[1] > 0 else None


@pytest.mark.slow  # a Ray cluster of several nodes, PostgreSQL and S3, real trainings
def test_a_worker_kind_runs_on_its_node_and_resumes_on_another_from_the_store(cluster, tmp_path):
    cluster.add_node("w1", edge=1)
    server = cluster.server("a")
    api = Api(server.url, cluster.token)
    sha = api.upload(cluster.teacher)
    job_id = api.submit(sha, FAILOVER, key="edge-job", resources={"worker": "edge"})["id"]
    running = api.wait(job_id, until=lambda j: j["attempt_history"] and j["attempt_history"][-1]["pid"]
                       and _mid_epoch(cluster, job_id, tmp_path), every=0.1)
    assert running["resources"] == {"CPU": 1.0, "edge": 1.0}
    assert cluster.attempts(job_id)[0]["scratch"].endswith("scratch-w1")  # placed on the edge node
    pid = running["attempt_history"][-1]["pid"]
    while True:  # freeze the worker; kill the node only while the state in the store is mid-epoch
        os.kill(pid, signal.SIGSTOP)
        killed_at = _mid_epoch(cluster, job_id, tmp_path)
        if killed_at:
            os.kill(cluster.nodes["w1"].raylet_pid(), signal.SIGKILL)  # the node's raylet: the node is gone
            os.kill(pid, signal.SIGKILL)  # its worker goes with it (frozen here only to pin the checkpoint)
            break
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
    seen: list = []
    waiting = api.wait(job_id, until=lambda j: j["state"] == "queued" and "kind edge" in j["reason"], seen=seen)
    assert waiting["reason"].startswith("waiting for a node of kind edge (Ray resource 'edge'): no node of the Ray "
                                        "cluster has it now"), seen
    reference = api.submit(sha, FAILOVER, key="reference")["id"]  # the same job, uninterrupted, on the head node
    time.sleep(3)
    assert api.job(job_id)["state"] == "queued"  # not run elsewhere
    cluster.add_node("w2", edge=1)
    job = api.wait(job_id)
    assert job["state"] == "succeeded", job
    assert [a["outcome"] for a in job["attempt_history"]] == ["died", "succeeded"]
    first, second = cluster.attempts(job_id)
    assert first["scratch"].endswith("scratch-w1") and not first["state_existed"]
    assert second["scratch"].endswith("scratch-w2") and second["state_existed"] and second["fetched"] >= 3
    assert second["node_id"] != first["node_id"]
    report = api.http.get(f"/v1/jobs/{job_id}/report").json()
    assert report["distillation"]["resumed_from_epoch"] == 1 and killed_at[1] > 0
    assert api.wait(reference)["state"] == "succeeded"
    students = {}
    for j in (job_id, reference):
        path = tmp_path / f"{j}.pt"
        path.write_bytes(api.http.get(f"/v1/jobs/{j}/artifacts/student.pt").content)
        students[j] = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert same_weights(students[job_id], students[reference])
    assert api.http.get(f"/v1/jobs/{job_id}/artifacts/student.onnx").content == \
        api.http.get(f"/v1/jobs/{reference}/artifacts/student.onnx").content


@pytest.mark.slow  # a Ray cluster of several nodes, PostgreSQL and S3, real trainings
def test_what_no_node_has_waits_queued_saying_so_and_a_tokens_queue_is_bounded(cluster):
    server = cluster.servers.get("a") or cluster.server("a")
    tight = Api(server.url, cluster.make_token("tight", "--max-queued", "1"))
    sha = tight.upload(cluster.teacher)
    nowhere = tight.submit(sha, tiny_recipe(), key="nowhere", resources={"worker": "nowhere"})["id"]
    job = tight.wait(nowhere, until=lambda j: "kind nowhere" in j["reason"])
    assert job["state"] == "queued" and job["reason"] == ("waiting for a node of kind nowhere (Ray resource "
                                                          "'nowhere'): no node of the Ray cluster has it now")
    over = tight.http.post("/v1/jobs", json={"teacher_sha256": sha, "recipe": tiny_recipe(seed=1)})
    assert over.status_code == 429 and "quota: 1 of your jobs are queued" in over.json()["detail"]
    api = Api(server.url, cluster.token)
    cuda = api.submit(sha, tiny_recipe(), overrides=["device=cuda"], key="cuda")["id"]
    job = api.wait(cuda, until=lambda j: "GPU" in j["reason"])
    assert job["state"] == "queued" and job["reason"] == ("waiting for a GPU worker: no node of the Ray cluster has "
                                                          "a GPU now"), job
    assert job["resources"] == {"CPU": 1.0, "GPU": 1.0}
    time.sleep(2)
    assert api.job(cuda)["attempts"] == 0 and tight.job(nowhere)["attempts"] == 0
    for who, j in ((tight, nowhere), (api, cuda)):
        assert who.http.post(f"/v1/jobs/{j}/cancel").status_code == 202
        assert who.job(j)["state"] == "cancelled"


@pytest.mark.slow  # a Ray cluster of several nodes, PostgreSQL and S3, real trainings
def test_two_servers_on_one_postgresql_a_rolling_restart_loses_nothing_and_runs_nothing_twice(cluster):
    a = cluster.servers.get("a") or cluster.server("a")
    b = cluster.server("b")
    sha = Api(a.url, cluster.token).upload(cluster.teacher)
    keys = [f"load-{i}" for i in range(8)]
    ids: dict[str, set] = {k: set() for k in keys}
    latencies, errors = [], []
    urls = {"a": a.url, "b": b.url}
    # one client for every poll: a new one per request builds an SSL context (the CA bundle parsed again, ~30 ms of
    # CPU) even for plain http, and four threads polling for minutes spent ~2 CPU-minutes on it (py-spy, full suite)
    http = httpx.Client(headers=_auth(), timeout=60)

    def client(mine: list[str]) -> None:
        """Submits its keys to both servers (a retry of the same request), then polls until they end; a refused
        connection (its server restarting) is tried on the other server."""
        try:
            for key in mine:
                for name in ("a", "b"):
                    r = _post(http, urls, name, sha, key)
                    ids[key].add(r["id"])
            pending = set().union(*(ids[k] for k in mine))
            while pending:
                for job_id in list(pending):
                    started = time.monotonic()
                    job = _get(http, urls, job_id)
                    latencies.append(time.monotonic() - started)
                    if job["finished"]:
                        pending.discard(job_id)
                time.sleep(0.3)
        except Exception as e:  # pragma: no cover - reported by the assertion below
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(keys[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    api = Api(a.url, cluster.token)
    for name in ("a", "b"):  # the rolling restart: each server stops in order while jobs run, then starts again
        deadline = time.monotonic() + 300
        while not [j for j in _jobs(api) if j["state"] == "running" and j["recipe_name"] == "load"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(2)
        old = cluster.servers[name]
        old.proc.send_signal(signal.SIGTERM)
        old.proc.wait(120)
        assert old.proc.returncode == 0, old.output()[-3000:]
        urls[name] = cluster.server(name).url
        api = Api(urls["b" if name == "a" else "a"], cluster.token)
    for t in threads:
        t.join(600)
    assert errors == []
    assert all(len(found) == 1 for found in ids.values()), ids  # the same key to both servers: one job
    jobs = {job_id: _get(http, urls, job_id) for found in ids.values() for job_id in found}
    assert len(jobs) == 8 and {j["state"] for j in jobs.values()} == {"succeeded"}, jobs
    handed = 0
    for job_id, job in jobs.items():
        outcomes = [a["outcome"] for a in job["attempt_history"]]
        assert outcomes[-1] == "succeeded" and outcomes.count("succeeded") == 1, outcomes
        assert set(outcomes[:-1]) <= {"handed over", "lost"}, outcomes
        assert len(cluster.attempts(job_id)) == len(outcomes)  # no attempt the store does not know of
        handed += outcomes.count("handed over")
    assert handed >= 1  # the restarts did stop running jobs
    onnx = {cluster.stored(job_id, "out/student.onnx") for job_id in jobs}
    assert len(onnx) == 1 and None not in onnx  # one recipe, one seed: one student, however often it moved
    print(f"status calls: {len(latencies)}, p50 {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms")


def _post(http: httpx.Client, urls: dict, first: str, sha: str, key: str) -> dict:
    for name in (first, "b" if first == "a" else "a") * 20:
        try:
            r = http.post(urls[name] + "/v1/jobs",
                          json={"teacher_sha256": sha, "recipe": LOAD, "idempotency_key": key})
            assert r.status_code in (200, 201), r.text
            return r.json()
        except httpx.TransportError:
            time.sleep(0.5)
    raise AssertionError("no server answered")


def _get(http: httpx.Client, urls: dict, job_id: str) -> dict:
    for name in ("a", "b") * 20:
        try:
            r = http.get(urls[name] + f"/v1/jobs/{job_id}")
            assert r.status_code == 200, r.text
            return r.json()
        except httpx.TransportError:
            time.sleep(0.5)
    raise AssertionError("no server answered")


def _jobs(api: Api) -> list[dict]:
    try:
        return api.http.get("/v1/jobs").json()
    except httpx.TransportError:
        return []


_TOKEN: list[str] = []


def _auth() -> dict:
    return {"Authorization": f"Bearer {_TOKEN[0]}"}


@pytest.fixture(autouse=True)
def _token(cluster):
    _TOKEN[:] = [cluster.token]
