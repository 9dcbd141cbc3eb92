"""The artifact store: teachers by sha256 and each job's directory, behind one small interface.

`LocalArtifacts` keeps them under the server's home (a directory every worker of a one-machine Ray can reach).
A store for several machines (fsspec, s3://) implements the same methods; the worker writes a job's files into
`job_dir(id)` as `compress distill` writes its --out, so nothing else changes.

Artifact names a client gives are checked against the job's own listing: nothing outside `out/` can be named,
whatever `..`, absolute path or symlink the name holds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from compressor.core.fileio import atomic_path

HIDDEN = (".",)  # lock files, temporaries
NOT_ARTIFACTS = {"train_state.pt"}  # the resumable state stays on the server: it is not the job's result


class UploadTooLarge(Exception):
    pass


class HashMismatch(Exception):
    def __init__(self, got: str):
        self.got = got


class Upload:
    """Bytes written as they arrive, hashed and counted: over `limit` raises UploadTooLarge, a sha256 other than
    the one claimed raises HashMismatch, and either removes the file. The caller checks the content, then
    `keep_teacher` or `discard`s it."""

    def __init__(self, folder: Path, limit: int):
        fd, name = tempfile.mkstemp(prefix=".upload.", suffix=".tmp", dir=folder)
        self.file, self.path, self.limit = os.fdopen(fd, "wb"), Path(name), limit
        self.hash, self.size = hashlib.sha256(), 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            self.abort()
            raise UploadTooLarge()
        self.hash.update(chunk)
        self.file.write(chunk)

    def finish(self, sha256: str) -> Path:
        self.file.close()
        if self.hash.hexdigest() != sha256:
            self.abort()
            raise HashMismatch(self.hash.hexdigest())
        return self.path

    def abort(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


class LocalArtifacts:
    def __init__(self, root: Path):
        self.root = Path(root)

    # teachers ---------------------------------------------------------------------------------------------------
    def teacher_path(self, sha256: str) -> Path:
        return self.root / "teachers" / f"{sha256}.pt"

    def has_teacher(self, sha256: str) -> bool:
        return self.teacher_path(sha256).is_file()

    def upload(self, limit: int) -> Upload:
        """A teacher upload, streamed to a temporary file beside its place (see `Upload`)."""
        folder = self.root / "teachers"
        folder.mkdir(parents=True, exist_ok=True)
        return Upload(folder, limit)

    def keep_teacher(self, tmp: Path, sha256: str) -> None:
        os.replace(tmp, self.teacher_path(sha256))

    @staticmethod
    def discard(tmp: Path) -> None:
        tmp.unlink(missing_ok=True)

    # jobs -------------------------------------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def out_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "out"

    def log_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "job.log"

    def write_request(self, job_id: str, recipe_yaml: str) -> None:
        """The job's directory, with the recipe as the client sent it (for whoever reads the folder)."""
        self.job_dir(job_id).mkdir(parents=True, exist_ok=True)
        with atomic_path(self.job_dir(job_id) / "request.yaml") as tmp:
            tmp.write_text(recipe_yaml, encoding="utf-8")

    def list(self, job_id: str) -> list[dict]:
        """The job's artifacts: every regular file under out/ (figures/ included) but hidden ones and the
        training state, as {name, size} with `/`-separated names relative to out/."""
        out = self.out_dir(job_id)
        found = []
        if not out.is_dir():
            return found
        for path in sorted(out.rglob("*")):
            rel = path.relative_to(out)
            if (any(part.startswith(HIDDEN) for part in rel.parts) or path.is_symlink() or not path.is_file()
                    or rel.as_posix() in NOT_ARTIFACTS):
                continue
            found.append({"name": rel.as_posix(), "size": path.stat().st_size})
        return found

    def artifact(self, job_id: str, name: str) -> Path | None:
        """The file of an artifact the job's listing names, else None: a client's name is never joined to a
        path before it is found among the listed ones."""
        for entry in self.list(job_id):
            if entry["name"] == name:
                return self.out_dir(job_id) / Path(*name.split("/"))
        return None

    def read_log(self, job_id: str, offset: int = 0, limit: int = 1 << 20) -> tuple[str, int]:
        """The job's log from byte `offset` (at most `limit` bytes, cut at a line's end): (text, next offset)."""
        path = self.log_path(job_id)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(limit)
        except FileNotFoundError:
            return "", offset
        if len(data) == limit and b"\n" in data:
            data = data[: data.rindex(b"\n") + 1]
        return data.decode("utf-8", errors="replace"), offset + len(data)

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
