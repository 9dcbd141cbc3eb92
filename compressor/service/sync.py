"""A worker's files and the artifact store: what an attempt fetches before it runs and what it ships while it runs,
so that a job retried on another node resumes from the checkpoint the first node saved.

- `fetch_state` copies the job's out/ from the store into the attempt's own folder on this node (train_state.pt,
  metrics.jsonl, the run record `.compressor-run.json`, whatever the last attempt finished): the bytes are the same,
  so the run record owns them and `distill(resume=True)` goes on from them as from its own.
- `StoreSync` is a `core.fileio.on_written` hook: each file the run commits under out/ is copied to the store at
  once, after the run record. Registered outside `distill`'s own record hook, it runs after the record has listed
  the file's new sha256 beside its old one, so the store's record owns the store's file at every moment (the record
  first, then the file: a worker killed between the two leaves a record listing both contents).
- `LogShipper` copies the attempt's log to the store every LOG_EVERY seconds and at the end (an object store has no
  append: the log is small and sent whole; the attempt's log starts from the store's, so it holds every attempt).
- `Fence`: once the server that started the attempt is gone (its board actor died), the attempt writes nothing more
  to the store: another server may already have handed the job to another worker.
"""

from __future__ import annotations

import threading
from pathlib import Path

from compressor.service.artifacts import HIDDEN, Artifacts

LOG_EVERY = 1.0  # seconds between copies of a running attempt's log to the store
RECORD = ".compressor-run.json"  # core.runrecord.RECORD_NAME: the run record of `distill --out`
SKIP = (".compressor.lock",)  # never copied: the lock is this node's


class StoreUnavailable(Exception):
    """The store refused a write while the job ran: the attempt stops, and the server tries it again."""


class Fence:
    """Whether this attempt may still write to the store."""

    def __init__(self):
        self.lost = threading.Event()

    def __bool__(self) -> bool:
        return not self.lost.is_set()


def shipped(name: str) -> bool:
    """Whether a file of out/ (relative name) belongs in the store: the run's files and its record."""
    parts = name.split("/")
    if parts[-1] in SKIP or parts[-1].endswith(".tmp"):
        return False
    return name == RECORD or not any(p.startswith(HIDDEN) for p in parts)


def fetch_state(store: Artifacts, job_id: str, out: Path) -> list[str]:
    """The job's out/ as the store holds it, into `out` (new and empty): the names copied."""
    names = [n for n in sorted(store.files(store.job_key(job_id, "out"))) if shipped(n)]
    for name in names:
        store.get_file(store.job_key(job_id, "out", *name.split("/")), out / Path(*name.split("/")))
    return names


class StoreSync:
    """The on_written hook that copies each file the run commits under `out` to the job's out/ in the store."""

    def __init__(self, store: Artifacts, job_id: str, out: Path, fence: Fence):
        self.store, self.job_id, self.out, self.fence = store, job_id, out.resolve(), fence
        self.sent: dict[str, int] = {}

    def _name(self, path: Path) -> str | None:
        try:
            name = Path(path).resolve().relative_to(self.out).as_posix()
        except ValueError:
            return None
        return name if shipped(name) and name != RECORD else None

    def _put(self, name: str) -> None:
        local = self.out / Path(*name.split("/"))
        try:
            self.store.put_file(local, self.store.job_key(self.job_id, "out", *name.split("/")))
        except FileNotFoundError:
            return
        except Exception as e:  # the store is down or refuses: stop here, the store stays consistent
            raise StoreUnavailable(f"the artifact store refused {name}: {type(e).__name__}: {e}".splitlines()[0])
        self.sent[name] = local.stat().st_size

    def prepare(self, path: Path, digest: str) -> None:
        pass

    def commit(self, path: Path) -> None:
        name = self._name(path)
        if name is None or not self.fence:
            return
        if (self.out / RECORD).exists():
            self._put(RECORD)
        self._put(name)

    def finish(self) -> None:
        """Whatever the hooks did not see (or saw fail), then the run record in its final state."""
        if not self.fence:
            return
        present = {p.relative_to(self.out).as_posix(): p.stat().st_size for p in self.out.rglob("*") if p.is_file()}
        for name, size in sorted(present.items()):
            if shipped(name) and name != RECORD and self.sent.get(name) != size:
                self._put(name)
        if RECORD in present:
            self._put(RECORD)


class LogShipper:
    """Copies `local` to the store's job.log every LOG_EVERY seconds while it grows, in a thread, and once more
    at `stop()`."""

    def __init__(self, store: Artifacts, job_id: str, local: Path, fence: Fence):
        self.store, self.key, self.local, self.fence = store, store.job_key(job_id, "job.log"), local, fence
        self.sent, self.done = -1, threading.Event()
        self.thread = threading.Thread(target=self._run, name="log-shipper", daemon=True)

    def start(self) -> LogShipper:
        self.thread.start()
        return self

    def ship(self) -> None:
        try:
            size = self.local.stat().st_size
        except FileNotFoundError:
            return
        if size != self.sent and self.fence:
            try:
                self.store.put_file(self.local, self.key)
                self.sent = size
            except Exception:  # the next round tries again; the log is not worth failing a job over
                pass

    def _run(self) -> None:
        while not self.done.wait(LOG_EVERY):
            self.ship()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=30)
        self.ship()
