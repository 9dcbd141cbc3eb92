"""What runs inside a Ray worker, on any node: one attempt at a job, the same `compressor.jobs.distill.distill` the
CLI runs, in a folder of this node's own, its files copied to the artifact store as they are written (`sync`).

    run_attempt(spec, board) -> {"outcome": ..., "exit_code": ..., "problems": [...], "report": {...} | None}

- The attempt works in `$COMPRESSOR_SCRATCH/<job>.<attempt>/` (default: the system's temporary folder), never in a
  path another node must see: the teacher comes from the store (read in place when the store is a local
  directory), an attempt after the first starts from the store's copy of the job's out/ (`sync.fetch_state`), and
  every file the run commits goes to the store at once (`sync.StoreSync`). The folder is removed when the attempt
  ends; one left by a killed attempt is removed by the job's next attempt on this node.
- The attempt's stdout and stderr (everything `compress distill` prints) are appended to the job's job.log, which
  is copied to the store as it grows.
- Progress events go to the server's `Board` actor: phase changes and each epoch's end at once, training steps at
  most once a second. The board also answers whether the job was cancelled; a thread asks twice a second and the
  job's `cancel()` reads its answer, so the training loop's check costs nothing.
- An attempt after the first runs with resume=True: `distill` goes on from out/train_state.pt (bit-identical on
  the CPU), or starts afresh when the first attempt died before its first checkpoint.
- The board also says when the server asks the attempt to stop (a cancel, a timeout, the server handing its jobs
  over as it stops): the job's `cancel()` is then true, and `distill` saves its state and stops. A board that is
  gone means the server is gone: the attempt stops and writes nothing more to the store (`sync.Fence`).
- Each attempt appends a line to attempts.jsonl (attempt, pid, whether a training state existed): the record that
  no job trains from scratch twice.
- The library's errors come back as outcomes, not exceptions (`GateFailure` -> gate_failed, `Cancelled` ->
  cancelled, any other `CompressorError` such as bad input or divergence -> rejected; `Interrupted`, a SIGTERM
  from outside, -> interrupted, which the server retries). A worker that dies (kill -9, out of memory) returns
  nothing: Ray tells the server, which retries.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from compressor.service.sync import Fence, LogShipper, StoreSync, StoreUnavailable, fetch_state

STEP_EVENTS_EVERY = 1.0  # seconds between training-step events pushed to the board
CANCEL_POLL = 0.5  # seconds between the cancel thread's questions to the board


@contextlib.contextmanager
def output_to(log: Path):
    """File descriptors 1 and 2 (Python's prints, rich's console, C libraries) appended to `log`, then restored."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


class Pusher:
    """The job's progress listener: ProgressEvents as dicts to the board, steps throttled."""

    def __init__(self, board, job_id: str, attempt: int):
        self.board, self.job_id, self.attempt = board, job_id, attempt
        self.last_phase, self.last_push = None, 0.0

    def __call__(self, event) -> None:
        now = time.monotonic()
        urgent = event.phase != self.last_phase or event.metrics is not None or event.phase == "done"
        if urgent or now - self.last_push >= STEP_EVENTS_EVERY:
            self.board.push.remote(self.job_id, self.attempt, {"kind": "progress", **event.to_dict()})
            self.last_phase, self.last_push = event.phase, now


class CancelWatch:
    """Asks the board whether the job should stop, in a thread; `__call__` is the job's cancel(). A board that is
    gone (its server died) stops the attempt and closes the fence: nothing more is written to the store."""

    def __init__(self, board, job_id: str, fence: Fence):
        import ray

        self._ray, self.board, self.job_id, self.fence = ray, board, job_id, fence
        self.flag, self.done = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._watch, name="cancel-watch", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.wait(CANCEL_POLL):
            try:
                if self._ray.get(self.board.cancelled.remote(self.job_id), timeout=10):
                    self.flag.set()
            except self._ray.exceptions.RayActorError:  # the server is gone: so is this attempt
                self.fence.lost.set()
                self.flag.set()
                return
            except Exception:  # the board is busy: ask again
                continue

    def __call__(self) -> bool:
        return self.flag.is_set()

    def stop(self) -> None:
        self.done.set()


def scratch_root() -> Path:
    return Path(os.environ.get("COMPRESSOR_SCRATCH") or Path(tempfile.gettempdir()) / "compressor-worker")


def run_attempt(spec: dict, board) -> dict:
    """One attempt at a job (spec: job_id, attempt, resume, teacher_sha256, store, recipe, device); never raises
    for the library's own errors."""
    from compressor.core.memory import fewer_collections
    from compressor.service.artifacts import Artifacts

    fewer_collections()  # a Ray worker of this service: its process runs our jobs only
    store, job_id, attempt = Artifacts.from_spec(spec["store"]), spec["job_id"], spec["attempt"]
    root = scratch_root()
    work = root / f"{job_id}.{attempt}"
    busy = clear_earlier(root, job_id, attempt)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "job.log"
    fence = Fence()
    try:
        with contextlib.suppress(FileNotFoundError):
            store.get_file(store.job_key(job_id, "job.log"), log)
        shipper = LogShipper(store, job_id, log, fence).start()
        try:
            with output_to(log):
                if busy:
                    print(f"== attempt {attempt} of job {job_id} waits: {busy} is still held by an earlier attempt",
                          flush=True)
                    return {"outcome": "busy", "exit_code": None, "problems": [f"{busy} is locked by another process"]}
                return _attempt(spec, board, store, work, fence)
        finally:
            shipper.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def clear_earlier(root: Path, job_id: str, attempt: int) -> Path | None:
    """Remove the folders that earlier attempts of this job left on this node (killed ones); one whose out/ is
    still locked by a live process is kept and returned (that attempt's worker still runs)."""
    for folder in root.glob(f"{job_id}.*"):
        if folder.name == f"{job_id}.{attempt}":
            continue
        if held_elsewhere(folder / "out"):
            return folder
        shutil.rmtree(folder, ignore_errors=True)
    return None


def _attempt(spec: dict, board, store, work: Path, fence: Fence) -> dict:
    from compressor.core.errors import Cancelled, CompressorError, GateFailure, Interrupted
    from compressor.core.fileio import on_written
    from compressor.jobs.distill import distill
    from compressor.recipe.load import validate_recipe

    job_id, attempt, out = spec["job_id"], spec["attempt"], work / "out"
    out.mkdir()
    fetched = fetch_state(store, job_id, out) if spec["resume"] else []
    state_existed = "train_state.pt" in fetched
    node_id = _node_id()
    node = f"{socket.gethostname()} (node {node_id[:8]})" if node_id else socket.gethostname()
    record = {"attempt": attempt, "resume": spec["resume"], "state_existed": state_existed, "pid": os.getpid(),
              "node": node, "node_id": node_id, "scratch": str(work.parent), "fetched": len(fetched),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "started_unix": time.time()}
    _append_attempt(store, job_id, work, record)
    board.push.remote(job_id, attempt, {"kind": "started", "pid": os.getpid(), "node": node})
    print(f"== attempt {attempt} of job {job_id} on {node} (pid {os.getpid()}), "
          f"{'resuming from its last checkpoint in the store' if state_existed else 'from the start'}", flush=True)
    teacher = store.local_teacher(spec["teacher_sha256"]) or fetch_teacher(store, spec["teacher_sha256"])
    watch = CancelWatch(board, job_id, fence)
    sync = StoreSync(store, job_id, out, fence)
    try:
        recipe = validate_recipe(spec["recipe"], "recipe")
        with on_written(sync):
            distill(teacher, recipe, out, device=spec["device"], resume=spec["resume"],
                    progress=Pusher(board, job_id, attempt), cancel=watch)
        sync.finish()
        return {"outcome": "succeeded", "exit_code": 0, "problems": [], "report": _report(out)}
    except CompressorError as e:
        outcome = ("gate_failed" if isinstance(e, GateFailure) else "cancelled" if isinstance(e, Cancelled)
                   else "interrupted" if isinstance(e, Interrupted) else "rejected")
        for line in e.problems:  # as `compress distill` prints them
            print(f"{'failed' if outcome == 'gate_failed' else 'error'}: {line}", flush=True)
        with contextlib.suppress(StoreUnavailable):
            sync.finish()  # a gate failure's artifacts, a cancelled run's saved state
        if not fence:
            outcome = "orphaned"
        return {"outcome": outcome, "exit_code": e.exit_code, "problems": e.problems,
                "report": _report(out) if outcome == "gate_failed" else None}
    except StoreUnavailable as e:
        print(f"error: {e}", flush=True)
        return {"outcome": "interrupted", "exit_code": None, "problems": [str(e)]}
    except Exception as e:  # a bug or a broken machine: the traceback goes to the job's log
        traceback.print_exc()
        return {"outcome": "failed", "exit_code": 1, "problems": [f"{type(e).__name__}: {e}".splitlines()[0]]}
    finally:
        watch.stop()


def fetch_teacher(store, sha256: str) -> Path:
    """The teacher from the store into this node's cache (by sha256, checked once when it arrives)."""
    from compressor.core.runrecord import sha256 as file_sha256

    cached = scratch_root() / "teachers" / f"{sha256}.pt"
    if not cached.is_file():
        store.get_file(store.teacher_key(sha256), cached)
        if file_sha256(cached) != sha256:
            cached.unlink()
            raise RuntimeError(f"the teacher {sha256[:12]} arrived with another sha256")
    return cached


def _append_attempt(store, job_id: str, work: Path, record: dict) -> None:
    """attempts.jsonl in the store, one line more."""
    local = work / "attempts.jsonl"
    with contextlib.suppress(FileNotFoundError):
        store.get_file(store.job_key(job_id, "attempts.jsonl"), local)
    with open(local, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    store.put_file(local, store.job_key(job_id, "attempts.jsonl"))


def _report(out: Path) -> dict | None:
    from compressor.service.reports import read_report

    return read_report(out)


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:
        return None


def held_elsewhere(out: Path) -> bool:
    """Whether another process (an older attempt's worker that outlived its server) holds the job's out/ lock."""
    from compressor.core import runlock
    from compressor.core.errors import UserError

    if not out.is_dir():
        return False
    try:
        runlock.let_go(runlock.acquire(out / runlock.LOCK_NAME, "--out", out))
    except UserError:
        return True
    return False
