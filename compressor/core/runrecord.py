"""Which files of an output a compressor run wrote: the run record, so that a run replaces only files it owns.

While a run holds its output's lock, every file it writes (fileio's atomic writes and appends) is recorded with its
sha256 in the output's record (`OUT/.compressor-run.json` for `compress distill`). A later run into the same place
may replace a file only when the record says a compressor run wrote exactly those bytes: the user's own
`student.pt`, a `report.md` they edited, a file copied in after the run are not the run's, and replacing them needs
`--force`. The record also says which run owns the files (`run`), so the files of one output always describe one
run, and in what state it left them (`running`, `finished`, `failed`).

    record = RunRecord.start(out / RECORD_NAME, out)
    with record.recording():   # every file written in here is recorded
        ...
    record.finish("finished")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from compressor.core.fileio import atomic_path, on_written

FORMAT = "compressor.run/1"
RECORD_NAME = ".compressor-run.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class RunRecord:
    path: Path  # the record file
    folder: Path  # the names in `files` are relative to it
    run: str  # the id of the run the recorded files belong to
    files: dict[str, list[str]] = field(default_factory=dict)  # name -> sha256 of what the run wrote (two while
    #                                                                 a write is under way: the old and the new)
    state: str = "running"  # running | finished | failed
    command: str = ""
    started: str = ""

    @classmethod
    def read(cls, path: Path, folder: Path) -> "RunRecord | None":
        """The record at `path`, or None where there is none or it is not one (damaged, another format)."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT or not isinstance(raw.get("files"), dict):
            return None
        files = {str(k): [str(d) for d in (v if isinstance(v, list) else [v])] for k, v in raw["files"].items()}
        return cls(path, folder, str(raw.get("run", "")), files,
                   str(raw.get("state", "running")), str(raw.get("command", "")), str(raw.get("started", "")))

    @classmethod
    def start(cls, path: Path, folder: Path) -> "RunRecord":
        """A new run's record, saved at once (empty): from now on the output belongs to this run."""
        record = cls(path, folder, uuid.uuid4().hex, command=" ".join(["compress", *sys.argv[1:]])[:300],
                     started=time.strftime("%Y-%m-%d %H:%M:%S"))
        record.save()
        return record

    def name_of(self, path: Path) -> str | None:
        """`path` relative to the folder, or None when it lies outside."""
        try:
            return Path(os.path.abspath(path)).relative_to(os.path.abspath(self.folder)).as_posix()
        except ValueError:
            return None

    def owns(self, name: str) -> bool:
        """Whether the file `name` (relative to the folder) holds exactly what a compressor run wrote there."""
        digests = self.files.get(name)
        target = self.folder / name
        if not digests or not target.is_file() or target.is_symlink():
            return False
        try:
            return sha256(target) in digests
        except OSError:
            return False

    def _mine(self, path: Path) -> str | None:
        name = self.name_of(path)
        return None if name is None or name == self.name_of(self.path) else name

    def prepare(self, path: Path, digest: str) -> None:
        """Before the run's new content of `path` becomes visible: both the old and the new are the run's, so a
        kill at any moment leaves a record that owns what the file then holds."""
        name = self._mine(path)
        if name is not None:
            self.files[name] = list(dict.fromkeys([*self.files.get(name, [])[-1:], digest]))
            self.save()

    def commit(self, path: Path) -> None:
        """After it became visible: only the new content is the run's."""
        name = self._mine(path)
        if name is not None and len(self.files.get(name, [])) > 1:
            self.files[name] = self.files[name][-1:]
            self.save()

    def record(self, path: Path) -> None:
        """A file written outside the hooks (a test building a run folder): its present content is the run's."""
        name = self._mine(path)
        if name is not None and path.is_file():
            self.files[name] = [sha256(path)]
            self.save()

    def forget(self, names) -> None:
        for name in names:
            self.files.pop(name, None)
        self.save()

    @contextlib.contextmanager
    def recording(self) -> Iterator["RunRecord"]:
        with on_written(self):
            yield self

    def finish(self, state: str) -> None:
        self.state = state
        self.save()

    def save(self) -> None:
        body = {"format": FORMAT, "run": self.run, "state": self.state, "command": self.command,
                "started": self.started, "files": dict(sorted(self.files.items()))}
        with atomic_path(self.path, notify=False) as tmp:
            tmp.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
