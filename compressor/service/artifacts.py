"""The artifact store: teachers by sha256 and each job's files, behind fsspec, so that every node of a Ray cluster
reaches them without a path only one machine can see.

    store = Artifacts("/srv/compressor")                                       # a local directory (the default:
    store = Artifacts("s3://bucket/prefix", {"endpoint_url": "http://..."})   #   the server's home), or any fsspec
                                                                               #   URL: any S3-compatible store
    <root>/teachers/<sha256>.pt          uploaded teachers, content-addressed
    <root>/jobs/<id>/request.yaml        the recipe as the client sent it
    <root>/jobs/<id>/job.log             every attempt's output, shipped by the worker as it grows
    <root>/jobs/<id>/attempts.jsonl      one line per attempt (node, pid, whether it resumed from a saved state)
    <root>/jobs/<id>/out/                what `compress distill --out` writes, copied file by file as the run commits
                                         it: train_state.pt and the run record too, so another node resumes from them

Everything streams: an upload is spooled to a file on the server's disk while it is hashed and checked, then copied
to the store in parts; a download is read in chunks; a worker copies files to and from its own disk. Nothing holds a
whole teacher in memory. Writes are whole or absent: a local store writes a temporary name and renames it, an
object store's PUT is atomic.

Artifact names a client gives are checked against the job's own listing: nothing outside `out/` can be named,
whatever `..`, absolute path or hidden name the name holds.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

HIDDEN = (".",)  # the run record, lock files, temporaries
NOT_ARTIFACTS = {"train_state.pt"}  # the resumable state stays in the store: it is not the job's result
CHUNK = 1 << 20
PART = 8 << 20  # an object store's multipart upload part (S3's least is 5 MiB)
PARTS_AT_ONCE = 2  # parts in flight at once: PART * PARTS_AT_ONCE bytes in memory, whatever the file's size


class UploadTooLarge(Exception):
    pass


class HashMismatch(Exception):
    def __init__(self, got: str):
        self.got = got


class Upload:
    """Bytes written to a local file as they arrive, hashed and counted: over `limit` raises UploadTooLarge, a
    sha256 other than the one claimed raises HashMismatch, and either removes the file. The caller checks the
    content, then `keep_teacher` or `discard`s it."""

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


def store_options(url: str, endpoint: str | None) -> dict:
    """fsspec options for a store URL: an S3-compatible endpoint, and no listing cache (workers write while the
    server lists)."""
    if url.startswith(("s3://", "s3a://")):
        return {**({"endpoint_url": endpoint} if endpoint else {}), "use_listings_cache": False}
    return {}


class Artifacts:
    def __init__(self, url: str | Path, options: dict | None = None, spool: Path | None = None):
        from fsspec.core import url_to_fs

        self.url, self.options = str(url), dict(options or {})
        self.fs, root = url_to_fs(self.url, **self.options)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.root = (str(Path(root).resolve()) if self.local else root).rstrip("/")
        self.spool = Path(spool) if spool else Path(tempfile.gettempdir())  # where uploads wait for their checks

    def spec(self) -> dict:
        """What a worker needs to open the same store (credentials come from its own environment)."""
        return {"url": self.url, "options": self.options}

    @classmethod
    def from_spec(cls, spec: dict) -> Artifacts:
        return cls(spec["url"], spec["options"])

    def describe(self) -> str:
        return self.root if self.local else f"{self.url}" + (f" at {self.options['endpoint_url']}"
                                                             if self.options.get("endpoint_url") else "")

    def check(self) -> None:
        """Reach the store once (at start): a wrong bucket or endpoint is one line, not a failing first job."""
        probe = self.key(".compressor-probe")
        self.put_bytes(b"", probe)  # writable, not only there
        self.fs.rm(probe)

    # keys and plain operations ----------------------------------------------------------------------------------
    def key(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, key: str) -> bool:
        return self.fs.exists(key)

    def size(self, key: str) -> int | None:
        try:
            return int(self.fs.size(key))
        except FileNotFoundError:
            return None

    def put_file(self, local: Path, key: str) -> None:
        """Copy a local file to `key`, whole or not at all."""
        if self.local:
            target = Path(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            try:
                self.fs.cp_file(str(local), tmp)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        else:  # in parts of PART bytes: what is in memory at once, whatever the file's size
            self.fs.put_file(str(local), key, chunksize=PART, max_concurrency=PARTS_AT_ONCE)

    def put_bytes(self, data: bytes, key: str) -> None:
        self.spool.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.spool, prefix=".put.", suffix=".tmp") as f:
            f.write(data)
            f.flush()
            self.put_file(Path(f.name), key)

    def get_file(self, key: str, local: Path) -> None:
        """Copy `key` to a local file, written under a temporary name and renamed."""
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".tmp", dir=local.parent)
        os.close(fd)
        try:
            self.fs.get_file(key, tmp)
            os.replace(tmp, local)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self.fs.cat_file(key)
        except FileNotFoundError:
            return None

    def stream(self, key: str, chunk: int = CHUNK) -> Iterator[bytes]:
        """The object at `key` in chunks (a download response's body)."""
        with self.fs.open(key, "rb", block_size=chunk) as f:
            while data := f.read(chunk):
                yield data

    def files(self, prefix: str) -> dict[str, int]:
        """Every file under `prefix`: its name relative to it (`/`-separated) -> size."""
        try:
            found = self.fs.find(prefix, detail=True)
        except FileNotFoundError:
            return {}
        start = len(prefix.rstrip("/")) + 1
        return {self._path(path)[start:]: int(info.get("size") or 0) for path, info in found.items()
                if info.get("type", "file") == "file"}

    def _path(self, path: str) -> str:
        return path if not self.local else str(Path(path))

    def remove(self, prefix: str) -> None:
        """A file or a whole prefix, if present."""
        try:
            if self.fs.exists(prefix):
                self.fs.rm(prefix, recursive=True)
        except FileNotFoundError:
            pass

    # teachers ---------------------------------------------------------------------------------------------------
    def teacher_key(self, sha256: str) -> str:
        return self.key("teachers", f"{sha256}.pt")

    def has_teacher(self, sha256: str) -> bool:
        return self.exists(self.teacher_key(sha256))

    def upload(self, limit: int) -> Upload:
        """A teacher upload, streamed to a temporary file on the server's disk (see `Upload`)."""
        self.spool.mkdir(parents=True, exist_ok=True)
        return Upload(self.spool, limit)

    def keep_teacher(self, tmp: Path, sha256: str) -> None:
        try:
            self.put_file(tmp, self.teacher_key(sha256))
        finally:
            tmp.unlink(missing_ok=True)

    def local_teacher(self, sha256: str) -> Path | None:
        """The teacher's own file where the store is a local directory (a worker reads it in place)."""
        return Path(self.teacher_key(sha256)) if self.local else None

    @staticmethod
    def discard(tmp: Path) -> None:
        tmp.unlink(missing_ok=True)

    def remove_teacher(self, sha256: str) -> None:
        self.remove(self.teacher_key(sha256))

    # jobs -------------------------------------------------------------------------------------------------------
    def job_key(self, job_id: str, *parts: str) -> str:
        return self.key("jobs", job_id, *parts)

    def write_request(self, job_id: str, recipe_yaml: str) -> None:
        """The recipe as the client sent it (for whoever reads the job's files)."""
        self.put_bytes(recipe_yaml.encode("utf-8"), self.job_key(job_id, "request.yaml"))

    def list(self, job_id: str) -> list[dict]:
        """The job's artifacts: every file under out/ (figures/ included) but hidden ones and the training state,
        as {name, size} with `/`-separated names relative to out/."""
        found = []
        for name, size in sorted(self.files(self.job_key(job_id, "out")).items()):
            parts = name.split("/")
            if any(p.startswith(HIDDEN) for p in parts) or name in NOT_ARTIFACTS:
                continue
            found.append({"name": name, "size": size})
        return found

    def artifact(self, job_id: str, name: str) -> dict | None:
        """The listing's entry for `name` with its key, else None: a client's name is never joined to a path
        before it is found among the listed ones."""
        for entry in self.list(job_id):
            if entry["name"] == name:
                return {**entry, "key": self.job_key(job_id, "out", *name.split("/"))}
        return None

    def read_artifact(self, job_id: str, name: str) -> bytes | None:
        entry = self.artifact(job_id, name)
        return self.read_bytes(entry["key"]) if entry else None

    def read_log(self, job_id: str, offset: int = 0, limit: int = 1 << 20) -> tuple[str, int]:
        """The job's log from byte `offset` (at most `limit` bytes, cut at a line's end): (text, next offset)."""
        key = self.job_key(job_id, "job.log")
        size = self.size(key)
        if size is None or offset >= size:
            return "", offset
        data = self.fs.cat_file(key, start=offset, end=min(size, offset + limit))
        if len(data) == limit and b"\n" in data:
            data = data[: data.rindex(b"\n") + 1]
        return data.decode("utf-8", errors="replace"), offset + len(data)

    def delete_job(self, job_id: str) -> None:
        self.remove(self.key("jobs", job_id))
