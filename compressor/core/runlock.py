"""One run per output: an exclusive advisory lock on a hidden file beside what a run writes.

`compress distill` locks `OUT/.compressor.lock` and `compress train` locks `.NAME.lock` beside its checkpoint
before looking at what is there, so a second run into the same place refuses at once (exit 2) and names the
one that is running, instead of both writing and one's report describing the other's files.

The lock is `flock(2)`: the kernel drops it when the holding process dies, however it dies, so a run killed
with `kill -9` never leaves a lock that blocks `--resume` (forked children, DataLoader workers, close their copy
at once: they could outlive a killed parent by seconds). The file only carries who holds it (pid, host,
command, start time) for the message; a leftover file without a holder is simply taken over.

    with hold_lock(out / LOCK_NAME, "--out", out):
        ...  # this process alone writes into out
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from compressor.core.errors import UserError

LOCK_NAME = ".compressor.lock"
_HELD: set[int] = set()  # the lock descriptors this process holds


def _close_in_child() -> None:
    """A forked child (a DataLoader worker) shares the parent's lock: flock belongs to the open file, which lives as
    long as any process has it open, so a worker outliving a `kill -9`ed parent by seconds would keep the run
    locked. Children close their copies at once."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the file (best effort: it may be mid-write)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def acquire(lock_path: Path, flag: str, target: Path) -> int:
    """Take the lock or raise UserError naming the run that holds it. Returns the open descriptor."""
    for _ in range(10):
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{flag}: cannot create the lock file {lock_path} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(f"{flag}: {target} is in use by another run ({holder}); wait for it to finish or use "
                            "another output") from None
        # the holder removes the file when it lets go: if it did so between our open and our flock, we hold a
        # lock on a file nobody else can see — start again on the path's current file
        try:
            current = os.stat(lock_path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)
    else:  # pragma: no cover - ten lost races in a row
        raise UserError(f"{flag}: cannot lock {target} (the lock file keeps changing)")
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(["compress", *sys.argv[1:]])[:300],
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
    _HELD.add(fd)
    return fd


def release(lock_path: Path, fd: int) -> None:
    """Remove the lock file (while still holding it, so no one else can be inside) and let go."""
    with contextlib.suppress(OSError):
        if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
            os.unlink(lock_path)
    let_go(fd)


def let_go(fd: int) -> None:
    """Close a lock descriptor (the lock goes with it), leaving the file."""
    _HELD.discard(fd)
    os.close(fd)


@contextlib.contextmanager
def hold_lock(lock_path: Path, flag: str, target: Path) -> Iterator[None]:
    fd = acquire(Path(lock_path), flag, Path(target))
    try:
        yield
    finally:
        release(Path(lock_path), fd)
