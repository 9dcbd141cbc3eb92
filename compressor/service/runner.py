"""The engine: jobs run as Ray tasks, dispatched by a thread of the server from the job store.

The store is the truth about jobs (what TAO does with Kubernetes: its own records and queue, the cluster only as
the executor). Every `poll_seconds` the dispatcher
1. drains the `Board` actor: the workers' progress events and their pids, into the jobs' rows;
2. collects finished attempts: an outcome from the worker ends the job (or retries it after an `interrupted`);
   a worker that died (kill -9, out of memory, its node gone) retries the job from its last checkpoint while
   attempts remain (`max_attempts`, counted and shown) — Ray's own retries are off (max_retries=0) so that each
   attempt is seen and resumes rather than restarts;
3. starts queued jobs, oldest first, that fit in what the cluster has free (each asks for `cpus_per_job` CPUs and
   a GPU when its device is cuda); one that does not fit stays queued with the reason (CPUs busy, or no GPU).

Reconciliation on start: the tasks of a server that stopped died with it (a Ray driver's tasks end with the
driver; the embedded Ray itself goes with the server), so every job the store calls `running` is re-queued to
resume from its checkpoint (or cancelled, if that was asked). A worker of the old server that somehow still held a
job's folder is detected by the folder's lock (`busy`), and the job waits for it instead of running twice.

Ray runs with token authentication (RAY_AUTH_MODE=token); the embedded Ray's token is <home>/ray_auth_token and
it listens on loopback only.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading

from compressor.service.artifacts import LocalArtifacts
from compressor.service.client import describe
from compressor.service.config import ServerConfig
from compressor.service.reports import read_report, summary
from compressor.service.store import FINISHED, Attempt, Job, Store, now

log = logging.getLogger("compressor.service")
NAMESPACE = "compressor"


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


class Runner:
    def __init__(self, cfg: ServerConfig, store: Store, artifacts: LocalArtifacts):
        self.cfg, self.store, self.artifacts = cfg, store, artifacts
        self.lock = threading.Lock()  # every change of a job's state goes through it (API and dispatcher)
        self.running: dict = {}  # ObjectRef -> job id, the attempts in flight
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)

    def start(self) -> None:
        from compressor.service.worker import run_attempt

        start_ray(self.cfg)  # before ray is imported here (see start_ray)
        import ray

        self.board = ray.remote(num_cpus=0)(Board).options(name=f"board-{os.getpid()}").remote()
        self.task = ray.remote(run_attempt)
        self.reconcile()
        self.thread.start()

    def stop(self) -> None:
        import ray

        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        ray.shutdown()

    def gpus(self) -> float:
        import ray

        return ray.cluster_resources().get("GPU", 0.0)

    # called by the API ------------------------------------------------------------------------------------------
    def cancel(self, job_id: str, who: str) -> None:
        """A queued job is cancelled at once; a running one is told to stop (it saves its state and the worker
        reports `cancelled`)."""
        with self.lock, self.store.session() as s:
            job = s.get(Job, job_id)
            job.cancel_requested = True
            if job.state == "queued":
                self._end(job, "cancelled", f"cancelled by {who} before it started")
            else:
                job.reason = f"cancelling (asked by {who}): the job saves its training state and stops"
                self.board.cancel.remote(job_id)

    # the dispatcher ---------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.stopping.wait(self.cfg.poll_seconds):
            try:
                self._drain()
                self._collect()
                self._dispatch()
            except Exception:  # a round that failed (the database busy, Ray restarting) is tried again next round
                log.exception("dispatcher round failed")

    def _drain(self) -> None:
        import ray

        events = ray.get(self.board.drain.remote(), timeout=30)
        if not events:
            return
        with self.lock, self.store.session() as s:
            for job_id, attempt, event in events:
                job = s.get(Job, job_id)
                if job is None or job.state != "running" or attempt != job.attempts:
                    continue  # a late event of an attempt that is over
                if event["kind"] == "started":
                    run = job.runs[-1]
                    run.pid, run.node = event["pid"], event["node"]
                    job.reason = f"running: attempt {attempt} of {job.max_attempts} on {event['node']}"
                    continue
                job.progress = {k: v for k, v in event.items() if k != "kind"}
                if event.get("metrics"):
                    job.last_metrics = event["metrics"]
                job.progress_seq += 1
                if not job.cancel_requested:
                    job.reason = f"running: attempt {attempt} of {job.max_attempts}, {describe(job.progress)}"

    def _collect(self) -> None:
        import ray

        if not self.running:
            return
        done, _ = ray.wait(list(self.running), num_returns=len(self.running), timeout=0)
        for ref in done:
            job_id = self.running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as e:  # the worker or its node died: no outcome
                result = {"outcome": "died", "problems": [str(e).strip().splitlines()[0][:300]]}
            with self.lock, self.store.session() as s:
                self._after_attempt(s.get(Job, job_id), result)

    def _after_attempt(self, job: Job, result: dict) -> None:
        outcome, problems = result["outcome"], result.get("problems") or []
        run = job.runs[-1]
        run.ended_at, run.outcome, run.message = now(), outcome, "; ".join(problems)[:2000] or None
        if outcome == "busy":  # an older attempt still holds the folder: wait for it, this one does not count
            job.attempts -= 1
            job.state, job.reason = "queued", "waiting for an earlier attempt's worker to let go of the job's folder"
            return
        if outcome in ("died", "interrupted") and job.cancel_requested:
            outcome = "cancelled"
        if outcome in ("died", "interrupted"):
            what = "the worker died" if outcome == "died" else "the worker was interrupted"
            if job.attempts < job.max_attempts:
                job.state = "queued"
                job.reason = (f"{what} during attempt {job.attempts} ({run.message}); it resumes from its last "
                              f"checkpoint as attempt {job.attempts + 1} of {job.max_attempts}")
            else:
                self._end(job, "failed", f"{what} in each of its {job.attempts} attempts; the last: {run.message}")
            return
        if outcome in ("succeeded", "gate_failed"):
            report = read_report(self.artifacts.out_dir(job.id))
            job.summary = summary(report) if report else None
        job.problems = problems
        job.exit_code = result.get("exit_code")
        reasons = {
            "succeeded": "every gate passed",
            "gate_failed": "; ".join(problems) or "a gate failed",
            "rejected": "; ".join(problems) or "bad input",
            "cancelled": "cancelled; its training state is kept in the job's folder",
            "failed": "the job crashed: " + ("; ".join(problems) or "see its log"),
        }
        self._end(job, outcome, reasons[outcome])

    def _end(self, job: Job, state: str, reason: str) -> None:
        job.state, job.reason, job.finished_at = state, reason, now()

    def _dispatch(self) -> None:
        import ray

        total = ray.cluster_resources()
        with self.lock, self.store.session() as s:
            running = self.store.jobs(s, states=("running",))
            busy_cpu = sum(j.num_cpus for j in running)
            busy_gpu = sum(j.num_gpus for j in running)
            for job in sorted(self.store.jobs(s, states=("queued",)), key=lambda j: (j.created_at, j.id)):
                cpu_free = total.get("CPU", 0) - busy_cpu
                gpu_free = total.get("GPU", 0) - busy_gpu
                if job.num_gpus and total.get("GPU", 0) < job.num_gpus:
                    wait = "waiting for a GPU worker: no node of the Ray cluster has a GPU now"
                elif job.num_gpus > gpu_free:
                    wait = f"waiting for a GPU worker: all {total.get('GPU', 0):g} GPU(s) are busy"
                elif job.num_cpus > cpu_free:
                    wait = (f"waiting for a worker: it needs {job.num_cpus} CPU(s), {max(cpu_free, 0):g} of "
                            f"{total.get('CPU', 0):g} free ({len(running)} job(s) running)")
                else:
                    self._start_attempt(job)
                    running.append(job)
                    busy_cpu += job.num_cpus
                    busy_gpu += job.num_gpus
                    continue
                if job.reason != wait and not job.reason.startswith(("the worker", "the server", "waiting for an")):
                    job.reason = wait

    def _start_attempt(self, job: Job) -> None:
        job.attempts += 1
        resume = job.attempts > 1
        job.runs.append(Attempt(number=job.attempts, resume=resume))
        job.state = "running"
        job.started_at = job.started_at or now()
        job.reason = f"starting a worker for attempt {job.attempts} of {job.max_attempts}"
        spec = {"job_id": job.id, "attempt": job.attempts, "resume": resume, "device": job.device,
                "teacher": str(self.artifacts.teacher_path(job.teacher_sha256)),
                "out": str(self.artifacts.out_dir(job.id)), "log": str(self.artifacts.log_path(job.id)),
                "recipe": job.recipe}
        ref = self.task.options(num_cpus=job.num_cpus, num_gpus=job.num_gpus, max_retries=0,
                                name=f"compressor-{job.id}-{job.attempts}").remote(spec, self.board)
        self.running[ref] = job.id

    def reconcile(self) -> None:
        """On start: the store's `running` jobs have no task any more (see the module's docstring)."""
        with self.lock, self.store.session() as s:
            for job in self.store.jobs(s, states=("running",)):
                run = job.runs[-1] if job.runs else None
                if run is not None and run.ended_at is None:
                    run.ended_at, run.outcome, run.message = now(), "lost", "the server stopped while it ran"
                if job.cancel_requested:
                    self._end(job, "cancelled", "cancelled; the server stopped before the job did")
                elif job.attempts < job.max_attempts:
                    job.state = "queued"
                    job.reason = (f"the server restarted while attempt {job.attempts} ran; it resumes from its last "
                                  f"checkpoint as attempt {job.attempts + 1} of {job.max_attempts}")
                else:
                    self._end(job, "failed", f"the server stopped during its last attempt ({job.attempts})")
