"""The engine: jobs run as Ray tasks, dispatched by a thread of the server from the job store; the Ray side of
the dispatcher (its decisions are `dispatch`'s transactions).

The store is the truth about jobs (what TAO does with Kubernetes: its own records and queue, the cluster only as
the executor). Several servers may share one store (PostgreSQL) and one Ray cluster; each registers itself in the
`servers` table. Every `poll_seconds` a server's dispatcher
1. drains its `Board` actor: the progress events and pids of the workers it started, into the jobs' rows;
2. collects its finished attempts: an outcome from the worker ends the job; a worker that died (kill -9, out of
   memory, its node gone) re-queues the job to resume from its checkpoint in the artifact store while attempts
   remain (`max_attempts`, counted and shown) — Ray's own retries are off (max_retries=0) so that each attempt is
   seen and resumes rather than restarts;
3. starts queued jobs, oldest first, that the cluster can place (`placement`: CPUs, GPU, memory, a worker kind);
   one that cannot stays queued with the reason (busy, or no node has what it needs).
Every `heartbeat_seconds` it beats, re-queues the running jobs of servers that stopped beating for `lease_seconds`
(or died on this host), tells its workers which jobs must stop (cancelled, or past their timeout; a worker that
does not stop within STOP_GRACE seconds is killed), and removes expired jobs (`retention`).

Stopping in order (SIGTERM, a rolling restart): the server stops dispatching, asks its workers to stop (each saves
its training state and copies it to the store), waits up to `handover_seconds` for them, and re-queues their jobs
for any server (an attempt handed over does not count against max_attempts). A server killed outright loses its
workers with it (a Ray driver's tasks end with the driver; a worker whose server is gone also stops by itself and
writes nothing more, see `worker`), and its jobs are re-queued by the next server that notices.

Ray runs with token authentication (RAY_AUTH_MODE=token); the embedded Ray's token is <home>/ray_auth_token and
it listens on loopback only.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
import uuid
from dataclasses import dataclass

from compressor.service import dispatch, retention
from compressor.service.artifacts import Artifacts
from compressor.service.config import ServerConfig
from compressor.service.placement import Cluster, custom
from compressor.service.store import Store

log = logging.getLogger("compressor.service")
NAMESPACE = "compressor"
STOP_GRACE = 60.0  # seconds a worker has to stop after it was told to, before Ray kills it


class Board:
    """A Ray actor in the server's namespace: workers push events to it; the server drains them and tells it
    which jobs are cancelled (workers ask it)."""

    def __init__(self):
        self.events, self.cancelled_jobs = [], set()

    def push(self, job_id: str, attempt: int, event: dict) -> None:
        self.events.append((job_id, attempt, event))

    def drain(self) -> list:
        events, self.events = self.events, []
        return events

    def cancel(self, job_id: str) -> None:
        self.cancelled_jobs.add(job_id)

    def cancelled(self, job_id: str) -> bool:
        return job_id in self.cancelled_jobs


def start_ray(cfg: ServerConfig) -> None:
    """Join the cluster at cfg.ray_address, or start the embedded one (loopback, token auth). The environment is
    set before ray is imported: its token loader reads it once."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if not cfg.ray_address and not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
        token = cfg.home / "ray_auth_token"
        if not token.exists():
            fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, secrets.token_hex(32).encode())
            os.close(fd)
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    import ray

    # ray.init installs its own SIGTERM handler (exit at once); the server's (uvicorn's graceful shutdown, which
    # stops the dispatcher and Ray in order) stays
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    if cfg.ray_address:
        ray.init(address=cfg.ray_address, namespace=NAMESPACE, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=cfg.ray_cpus, namespace=NAMESPACE, include_dashboard=False,
                 log_to_driver=False, _node_ip_address="127.0.0.1")
    if threading.current_thread() is threading.main_thread():
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)


def first_line(error: BaseException) -> str:
    """An error's first line for a job's reason (Ray's TaskCancelledError has no message at all)."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]


@dataclass
class Flight:
    """An attempt this server submitted to Ray: whether its worker has started (else Ray still looks for a node),
    and whether it was withdrawn because no node can place it any more."""

    job_id: str
    attempt: int
    needs: dict
    started: bool = False
    withdrawn: str | None = None


class Runner:
    def __init__(self, cfg: ServerConfig, store: Store, artifacts: Artifacts):
        self.cfg, self.store, self.artifacts = cfg, store, artifacts
        self.id = uuid.uuid4().hex  # this server in the `servers` table
        self.running: dict = {}  # ObjectRef -> Flight: this server's attempts in flight
        self.stop_asked: dict[str, float] = {}  # job id -> when its worker was told to stop
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
        self.last_beat = self.last_sweep = 0.0

    def start(self) -> None:
        from compressor.service.worker import run_attempt

        start_ray(self.cfg)  # before ray is imported here (see start_ray)
        import ray

        # the board lives on this server's own node: it must die with the server, never with a worker's node
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.board = ray.remote(num_cpus=0)(Board).options(name=f"board-{self.id}", scheduling_strategy=here).remote()
        self.task = ray.remote(run_attempt)
        self._beat()
        self.thread.start()

    def stop(self) -> None:
        """Stop in order: no new attempts, this server's running jobs handed over (see the module's docstring)."""
        import ray

        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=30)
        try:
            self._hand_over()
            dispatch.leave(self.store, self.id)
        except Exception:
            log.exception("handing the jobs over failed; the next server takes them over when the lease ends")
        ray.shutdown()

    def engine(self) -> str:
        return f"Ray at {self.cfg.ray_address}" if self.cfg.ray_address else "a local Ray"

    def cluster(self) -> Cluster:
        return Cluster.from_ray()

    def gpus(self) -> float:
        return self.cluster().total("GPU")

    # called by the API ------------------------------------------------------------------------------------------
    def cancel(self, job_id: str, who: str) -> None:
        dispatch.cancel(self.store, job_id, who)

    # the dispatcher ---------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.stopping.wait(self.cfg.poll_seconds):
            try:
                self._drain()
                self._collect()
                if time.monotonic() - self.last_beat >= self.cfg.heartbeat_seconds:
                    self._beat()
                if not self.stopping.is_set():
                    self._dispatch()
                if self.cfg.retention_days and time.monotonic() - self.last_sweep >= self.cfg.retention_every:
                    self.last_sweep = time.monotonic()
                    retention.sweep(self.store, self.artifacts, self.cfg.retention_days)
            except Exception:  # a round that failed (the database busy, Ray restarting) is tried again next round
                log.exception("dispatcher round failed")

    def _beat(self) -> None:
        self.last_beat = time.monotonic()
        dispatch.heartbeat(self.store, self.id, f"http://{self.cfg.host}:{self.cfg.port}", self.engine())
        taken = dispatch.take_over(self.store, self.id, self.cfg.lease_seconds)
        if taken:
            log.warning("re-queued %d job(s) of servers that stopped: %s", len(taken), ", ".join(taken))
        self._stop_jobs()
        self._withdraw_unplaceable()

    def _withdraw_unplaceable(self) -> None:
        """An attempt Ray has not started yet whose needs no alive node has any more (the node it was meant for
        died, or left before it started): taken back from Ray, and the job queued again with the reason."""
        import ray

        waiting = [(ref, f) for ref, f in self.running.items() if not f.started and not f.withdrawn]
        if not waiting:
            return
        cluster = self.cluster()
        for ref, flight in waiting:
            reason = cluster.infeasible_reason(flight.needs)
            if reason:
                flight.withdrawn = reason
                ray.cancel(ref)

    def _stop_jobs(self) -> None:
        import ray

        for job_id in dispatch.to_stop(self.store, self.id):
            if job_id not in self.stop_asked:
                self.stop_asked[job_id] = time.monotonic()
                self.board.cancel.remote(job_id)
            elif time.monotonic() - self.stop_asked[job_id] > STOP_GRACE:
                for ref, flight in list(self.running.items()):
                    if flight.job_id == job_id:
                        ray.cancel(ref, force=True)

    def _drain(self) -> None:
        import ray

        events = ray.get(self.board.drain.remote(), timeout=30)
        started = {(job_id, attempt) for job_id, attempt, event in events if event["kind"] == "started"}
        for flight in self.running.values():
            flight.started = flight.started or (flight.job_id, flight.attempt) in started
        dispatch.record_events(self.store, self.id, events)

    def _collect(self, timeout: float = 0, handover: bool = False) -> None:
        import ray

        if not self.running:
            return
        done, _ = ray.wait(list(self.running), num_returns=len(self.running), timeout=timeout)
        for ref in done:
            flight = self.running[ref]
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as e:  # the worker or its node died, or it was withdrawn: no outcome
                # never started, and no node could start it now (its node died while Ray placed it there): it did
                # not run, so it does not count; the job waits, saying for what
                unplaced = not flight.started and (flight.withdrawn or self.cluster().infeasible_reason(flight.needs))
                if unplaced:
                    result = {"outcome": "unplaced", "problems": [unplaced]}
                else:
                    result = {"outcome": "died", "problems": [first_line(e)]}
            # the flight is forgotten only once the store has its end: a round that fails here tries it again
            dispatch.finish_attempt(self.store, self.id, flight.job_id, flight.attempt, result, handover=handover)
            del self.running[ref]
            self.stop_asked.pop(flight.job_id, None)

    def _dispatch(self) -> None:
        for spec in dispatch.claim(self.store, self.id, self.cluster()):
            self._submit(spec)

    def _submit(self, spec: dict) -> None:
        needs = spec.pop("needs")
        spec["store"] = self.artifacts.spec()
        options = {"num_cpus": needs.get("CPU", 0), "num_gpus": needs.get("GPU", 0), "max_retries": 0,
                   "name": f"compressor-{spec['job_id']}-{spec['attempt']}"}
        if needs.get("memory"):
            options["memory"] = needs["memory"]
        if custom(needs):
            options["resources"] = custom(needs)
        try:
            ref = self.task.options(**options).remote(spec, self.board)
        except Exception as e:  # Ray refused the task: the attempt ends without having run
            dispatch.finish_attempt(self.store, self.id, spec["job_id"], spec["attempt"],
                                    {"outcome": "died", "problems": [f"Ray refused the task: {e}"[:300]]})
            return
        self.running[ref] = Flight(spec["job_id"], spec["attempt"], needs)

    def _hand_over(self) -> None:
        """Ask this server's workers to stop, wait for them (their state reaches the store), re-queue their jobs."""
        if not self.running:
            return
        for flight in self.running.values():
            self.board.cancel.remote(flight.job_id)
        deadline = time.monotonic() + self.cfg.handover_seconds
        while self.running and time.monotonic() < deadline:
            self._drain()
            self._collect(timeout=1.0, handover=True)
        for flight in list(self.running.values()):  # still running: they die with this driver
            dispatch.finish_attempt(self.store, self.id, flight.job_id, flight.attempt,
                                    {"outcome": "died", "problems": ["the server stopped before the worker did"]})
        self.running.clear()
