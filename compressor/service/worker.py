"""What runs inside a Ray worker: one attempt at a job, the same `compressor.jobs.distill.distill` the CLI runs,
writing the same files into the job's out/ folder.

    run_attempt(spec, board) -> {"outcome": ..., "exit_code": ..., "problems": [...]}

- The attempt's stdout and stderr (everything `compress distill` prints) are appended to the job's job.log.
- Progress events go to the server's `Board` actor: phase changes and each epoch's end at once, training steps at
  most once a second. The board also answers whether the job was cancelled; a thread asks twice a second and the
  job's `cancel()` reads its answer, so the training loop's check costs nothing.
- An attempt after the first runs with resume=True: `distill` goes on from out/train_state.pt (bit-identical on
  the CPU), or starts afresh when the first attempt died before its first checkpoint.
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
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

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
    """Asks the board whether the job was cancelled, in a thread; `__call__` is the job's cancel()."""

    def __init__(self, board, job_id: str):
        import ray

        self._ray, self.board, self.job_id = ray, board, job_id
        self.flag, self.done = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._watch, name="cancel-watch", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.wait(CANCEL_POLL):
            try:
                if self._ray.get(self.board.cancelled.remote(self.job_id), timeout=10):
                    self.flag.set()
            except Exception:  # the board is busy or gone (the server died): the server's restart decides
                continue

    def __call__(self) -> bool:
        return self.flag.is_set()

    def stop(self) -> None:
        self.done.set()


def run_attempt(spec: dict, board) -> dict:
    """One attempt at a job (spec: job_id, attempt, resume, teacher, out, log, recipe, device); never raises for
    the library's own errors."""
    job_dir = Path(spec["out"]).parent
    job_dir.mkdir(parents=True, exist_ok=True)
    with output_to(Path(spec["log"])):
        return _attempt(spec, board, job_dir)


def _attempt(spec: dict, board, job_dir: Path) -> dict:
    from compressor.core.errors import Cancelled, CompressorError, GateFailure, Interrupted
    from compressor.jobs.distill import distill
    from compressor.recipe.load import validate_recipe

    out, attempt = Path(spec["out"]), spec["attempt"]
    state_existed = (out / "train_state.pt").exists()
    record = {"attempt": attempt, "resume": spec["resume"], "state_existed": state_existed, "pid": os.getpid(),
              "node": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "started_unix": time.time()}
    with open(job_dir / "attempts.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    board.push.remote(spec["job_id"], attempt, {"kind": "started", "pid": os.getpid(), "node": socket.gethostname()})
    print(f"== attempt {attempt} of job {spec['job_id']} on {socket.gethostname()} (pid {os.getpid()}), "
          f"{'resuming from its last checkpoint' if state_existed and spec['resume'] else 'from the start'}",
          flush=True)
    if held_elsewhere(out):
        return {"outcome": "busy", "exit_code": None, "problems": [f"{out} is locked by another process"]}
    watch = CancelWatch(board, spec["job_id"])
    try:
        recipe = validate_recipe(spec["recipe"], "recipe")
        distill(Path(spec["teacher"]), recipe, out, device=spec["device"], resume=spec["resume"],
                progress=Pusher(board, spec["job_id"], attempt), cancel=watch)
        return {"outcome": "succeeded", "exit_code": 0, "problems": []}
    except CompressorError as e:
        outcome = ("gate_failed" if isinstance(e, GateFailure) else "cancelled" if isinstance(e, Cancelled)
                   else "interrupted" if isinstance(e, Interrupted) else "rejected")
        for line in e.problems:  # as `compress distill` prints them
            print(f"{'failed' if outcome == 'gate_failed' else 'error'}: {line}", flush=True)
        return {"outcome": outcome, "exit_code": e.exit_code, "problems": e.problems}
    except Exception as e:  # a bug or a broken machine: the traceback goes to the job's log
        traceback.print_exc()
        return {"outcome": "failed", "exit_code": 1, "problems": [f"{type(e).__name__}: {e}".splitlines()[0]]}
    finally:
        watch.stop()


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
