"""An on-disk cache of what runs rebuild identically from the same inputs: today the teacher's ONNX export and its
accuracy in onnxruntime, which every `distill` of one teacher (a sweep, an ablation's runs, a service worker's jobs,
a rerun with another student size) would otherwise export and evaluate again.

Where: `$COMPRESSOR_CACHE` (a folder; `off` turns the cache off), else `$XDG_CACHE_HOME/compressor`, else
`~/.cache/compressor`. An entry is named by a sha256 of everything it depends on (the caller's key), holds its
bytes and a small JSON record with their sha256, and is written atomically; one that does not match its record when
read (a damaged or half-copied file) is a miss and is removed. At most `$COMPRESSOR_CACHE_MB` megabytes are kept
(1024 unless set), the least recently used entries removed first. A cache that cannot be read or written (a
read-only home, a full disk) is skipped silently: it is never the reason a run fails, only the reason it is slower.

    hit = cache.get("teacher-onnx", key)            # (bytes, meta) or None
    cache.put("teacher-onnx", key, data, {"accuracy": 93.1})
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from compressor.core.fileio import atomic_path

DEFAULT_MB = 1024


def cache_dir() -> Path | None:
    """The cache folder, or None when `$COMPRESSOR_CACHE` is `off` (or empty)."""
    explicit = os.environ.get("COMPRESSOR_CACHE")
    if explicit is not None:
        return None if explicit.strip().lower() in ("", "off", "0", "false", "no") else Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "compressor"


def _limit_bytes() -> int:
    try:
        return max(0, int(float(os.environ.get("COMPRESSOR_CACHE_MB", DEFAULT_MB)) * 2**20))
    except ValueError:
        return DEFAULT_MB * 2**20


def _paths(kind: str, key: str) -> tuple[Path, Path] | None:
    root = cache_dir()
    if root is None:
        return None
    folder = root / kind
    return folder / f"{key}.bin", folder / f"{key}.json"


def get(kind: str, key: str) -> tuple[bytes, dict] | None:
    """The entry's bytes and metadata, or None: no entry, the cache off, or an entry that fails its checksum."""
    paths = _paths(kind, key)
    if paths is None:
        return None
    data_path, meta_path = paths
    try:
        record = json.loads(meta_path.read_text())
        data = data_path.read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or hashlib.sha256(data).hexdigest() != record.get("sha256"):
        for p in paths:  # damaged: never served, and out of the way of the next put
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass
        return None
    try:
        os.utime(data_path)  # recently used: the last to be evicted
    except OSError:
        pass
    return data, dict(record.get("meta") or {})


def put(kind: str, key: str, data: bytes, meta: dict) -> bool:
    """Store an entry (bytes first, then the record that makes it visible); False if the cache is off or cannot
    be written. Then evict the least recently used entries beyond the size limit."""
    paths = _paths(kind, key)
    if paths is None or len(data) > _limit_bytes():
        return False
    data_path, meta_path = paths
    try:
        with atomic_path(data_path, notify=False) as tmp:
            tmp.write_bytes(data)
        with atomic_path(meta_path, notify=False) as tmp:
            tmp.write_text(json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "meta": meta}))
    except Exception:  # noqa: BLE001 - a cache that cannot be written is skipped, never a failed run
        return False
    _evict(data_path.parent.parent)
    return True


def _evict(root: Path) -> None:
    try:
        entries = [(p.stat().st_mtime, p.stat().st_size, p) for p in root.glob("*/*.bin")]
    except OSError:
        return
    total, limit = sum(size for _, size, _ in entries), _limit_bytes()
    for _, size, p in sorted(entries):
        if total <= limit:
            break
        try:
            p.with_suffix(".json").unlink(missing_ok=True)
            p.unlink(missing_ok=True)
        except OSError:
            continue
        total -= size
