"""Atomic file writes: every artifact goes to a temporary name in its own directory, then is renamed.

A reader (a CI pipeline, a person) therefore sees either the previous file or the complete new one,
never a truncated file, however the process dies: a kill leaves at most a hidden `.NAME.*.tmp` beside it,
which the next run writing NAME there removes (`remove_stale_temporaries`).
Every failure to write (no space, read-only, not a directory) becomes one `UserError` line naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from compressor.core.errors import UserError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def write_error(path: Path, e: OSError) -> UserError:
    """The one-line message for an OSError met while writing `path`."""
    if e.errno in _NO_SPACE:
        return UserError(f"{path}: no space left on device while saving (the previous file, if any, is unchanged)")
    if e.errno == errno.EFBIG:
        return UserError(f"{path}: file too large for this file system or the file-size limit (ulimit -f)")
    return UserError(f"{path}: cannot write ({e.strerror or e})")


# Who wants to know of each file written (core.runrecord: a run records every file it writes, so a later run can
# tell its files from the user's). A context variable: the hooks belong to the job running in this context. Each is
# told twice: before a file's new content becomes visible (its sha256) and after, so a kill between the two leaves
# a record that accepts whichever content the file holds.
_WRITTEN: ContextVar[tuple[Any, ...]] = ContextVar("compressor_written", default=())


@contextlib.contextmanager
def on_written(hook) -> Iterator[None]:
    """`hook.prepare(path, sha256)` before and `hook.commit(path)` after every file this context writes completely
    (atomic_path, append_jsonl)."""
    token = _WRITTEN.set((*_WRITTEN.get(), hook))
    try:
        yield
    finally:
        _WRITTEN.reset(token)


def _digest(*parts: bytes | Path) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        else:
            h.update(part)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, notify: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds; then tell the
    `on_written` hooks (unless `notify` is False: the run record saving itself).

    A device or FIFO (`--out /dev/null`, `/dev/stdout`) is written in place: there is nothing to replace, and
    renaming over it would destroy the device node.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a file")
    if path.exists() and not path.is_file():
        try:
            yield path
        except OSError as e:
            raise write_error(path, e) from None
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"{path}: cannot write here ({e.strerror or e})") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # flush to disk before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the user's usual mode
        hooks = _WRITTEN.get() if notify else ()
        if hooks:
            digest = _digest(tmp)
            for hook in hooks:
                hook.prepare(path, digest)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for hook in hooks:
        hook.commit(path)


# atomic_path's temporaries: "." + the target's name + "." + mkstemp's 8 random characters + ".tmp"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the hidden `.NAME.xxxxxxxx.tmp` files that a killed process left beside the files `names` in
    `folder` (a kill between atomic_path's write and its rename). Called only by a run that owns the folder and
    is about to write those files itself; nothing else in the folder is touched. Returns what was removed."""
    names, removed = set(names), []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMPORARY.match(entry.name)
        if m and m["name"] in names and entry.is_file() and not entry.is_symlink():
            try:
                entry.unlink()
                removed.append(entry)
            except OSError:  # not ours to remove after all (permissions): leave it
                pass
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, rows: list[Any]) -> None:
    write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one line; used for metrics.jsonl (a torn last line is skipped by `read_jsonl`)."""
    line = (json.dumps(obj, default=str) + "\n").encode("utf-8")
    hooks = _WRITTEN.get()
    try:
        if hooks:
            before = Path(path).read_bytes() if Path(path).exists() else b""
            for hook in hooks:
                hook.prepare(Path(path), _digest(before, line))
        with open(path, "ab") as f:
            f.write(line)
            f.flush()
    except OSError as e:
        raise write_error(Path(path), e) from None
    for hook in hooks:
        hook.commit(Path(path))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
    return rows
