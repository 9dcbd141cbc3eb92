"""A job's output: the run folder (or file) it claims, locks and never clobbers, and what it leaves on failure.

A `Claim` is this process's exclusive hold on an output (core.runlock's flock); `claimed` runs a job's body
holding it and turns Ctrl-C / SIGTERM outside the training loop into `Interrupted` saying how to go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compressor.core import runlock
from compressor.core.errors import Cancelled, GateFailure, Interrupted, UserError
from compressor.core.fileio import remove_stale_temporaries
from compressor.core.progress import CancelRequested, console

FINISHED_MARKER = "report.json"
# what `compress distill` writes into --out (and figures/), whose leftover temporaries a new run may remove
RUN_FILES = ("train_state.pt", "metrics.jsonl", "student.pt", "student.onnx", "teacher.onnx", "student.int8.onnx",
             "report.json", "report.md")
FIGURE_FILES = ("attention.png", "curves.png", "latency.png")


@dataclass
class RunPaths:
    out: Path

    @property
    def state(self) -> Path:
        return self.out / "train_state.pt"

    @property
    def metrics(self) -> Path:
        return self.out / "metrics.jsonl"


@dataclass
class Claim:
    """This process's hold on an output: the lock, and whether the run created the folder (so a run refused
    after set-up can remove what it made and nothing else)."""

    lock: Path
    fd: int
    created: Path | None

    def release(self, failed: bool) -> None:
        runlock.release(self.lock, self.fd)
        if failed and self.created is not None:
            _remove_if_empty(self.created)


def _remove_if_empty(folder: Path) -> None:
    """Remove a folder this run created if nothing of substance is in it (only empty files and folders)."""
    try:
        entries = list(folder.rglob("*"))
        if any(e.is_symlink() or (e.is_file() and e.stat().st_size > 0) or not (e.is_file() or e.is_dir())
               for e in entries):
            return
        for e in sorted(entries, key=lambda e: len(e.parts), reverse=True):
            e.unlink() if e.is_file() else e.rmdir()
        folder.rmdir()
    except OSError:  # someone else's file appeared, or permissions: leave it all
        pass


def claim(folder: Path, lock_name: str, target: Path, check) -> Claim:
    """Create `folder` if needed and lock it for `target` (a second run into it refuses at once, naming this
    one); then run `check` (what the folder already holds may refuse the run) under the lock."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out: {folder} exists and is not a directory")
    created = None if folder.exists() else next((p for p in [folder, *folder.parents] if p.parent.exists()), folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out: cannot create {folder} ({e.strerror})") from None
    claim = Claim(folder / lock_name, -1, created)
    try:
        claim.fd = runlock.acquire(claim.lock, "--out", target)
    except UserError:
        if created is not None:
            _remove_if_empty(created)
        raise
    try:
        check()
        _check_writable(folder)
    except BaseException:
        claim.release(failed=True)
        raise
    return claim


def claim_out_dir(out: Path, *, resume: bool, force: bool) -> Claim:
    """`distill`'s --out: locked, and a finished run is not clobbered nor an unfinished one silently restarted."""
    return claim(out, runlock.LOCK_NAME, out, lambda: _check_out_dir(out, resume=resume, force=force))


def claimed(claim: Claim | None, body, state: Path):
    """Run `body` holding `claim`; let go of it however body ends. Ctrl-C / SIGTERM outside the training loop
    (which says it itself) becomes `Interrupted` saying how to go on from the training `state`, if any."""
    ok = False
    try:
        result = body()
        ok = True
        return result
    except GateFailure:
        ok = True  # a finished run: every artifact is written
        raise
    except (KeyboardInterrupt, CancelRequested) as e:
        how = (f"{state} holds the training state: run the same command with --resume to go on from it (a finished "
               "training is not repeated)" if state.exists() else "no training state was saved yet: run it again")
        what = "cancelled" if isinstance(e, CancelRequested) else "interrupted"
        error = Cancelled if isinstance(e, CancelRequested) else Interrupted
        raise error(f"{what}; files being written were discarded, finished ones are complete; {how}") from None
    finally:
        if claim is not None:
            claim.release(failed=not ok)


def _check_out_dir(out: Path, *, resume: bool, force: bool) -> None:
    finished = (out / FINISHED_MARKER).exists()
    unfinished = RunPaths(out).state.exists()
    if finished and not force and not resume:
        raise UserError(f"--out: {out} holds a finished run ({FINISHED_MARKER}); pass --force to overwrite it")
    if unfinished and not finished and not resume and not force:
        raise UserError(f"--out: {out} holds an unfinished run; pass --resume to continue it or --force to start over")


def _check_writable(out: Path) -> None:
    probe = out / ".compressor-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out: {out} is not writable ({e.strerror})") from None


def remove_leftovers(folder: Path, names) -> None:
    removed = remove_stale_temporaries(folder, names)
    if removed:
        console.print(f"removed {len(removed)} temporary file(s) left in {folder} by an interrupted run: "
                      + ", ".join(p.name for p in removed))
