"""The server's settings: where it keeps things (its home, the job store, the artifact store), which datasets
clients may name, its limits.

    <home>/                     $COMPRESSOR_HOME or ~/.compressor/service (`compress serve --home`)
        jobs.db                 the job store (SQLite), unless --db names another SQLAlchemy URL (PostgreSQL)
        teachers/<sha256>.pt    uploaded teachers, content-addressed  } the artifact store, unless --artifacts
        jobs/<id>/              a job's files: out/, job.log, ...      } names another fsspec URL (s3://...)
        uploads/                teachers being received and checked, before they go to the artifact store
        ray_auth_token          the embedded Ray's token (RAY_AUTH_MODE=token), mode 0600

Datasets are named: the built-in Fashion-MNIST (`fashion_mnist`, from $COMPRESSOR_DATA or ./data), plus each
`--dataset NAME=PATH` the server was started with. A NAME that is one of the recipe's dataset kinds (cifar10,
cifar100, fashion_mnist) is that kind read from PATH; any other NAME is an image folder (`data.name: imagefolder`).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from compressor.core.errors import UserError

KINDS = ("fashion_mnist", "cifar10", "cifar100")  # recipe data.name values that are datasets in their own right
DEFAULT_PORT = 8321


@dataclass(frozen=True)
class Dataset:
    name: str  # what a client writes as data.name
    kind: str  # the recipe's data.name on the server: fashion_mnist | cifar10 | cifar100 | imagefolder
    root: str  # the server's path: never shown to a client


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("compressor")
    except PackageNotFoundError:  # a source tree that is not installed
        return "unknown"


def default_home() -> Path:
    return Path(os.environ.get("COMPRESSOR_HOME") or Path.home() / ".compressor" / "service")


def parse_datasets(specs: list[str] | None) -> dict[str, Dataset]:
    """`--dataset NAME=PATH` options plus the built-in Fashion-MNIST; a bad one is a UserError naming it."""
    builtin_root = Path(os.environ.get("COMPRESSOR_DATA") or "data").resolve()
    found = {"fashion_mnist": Dataset("fashion_mnist", "fashion_mnist", str(builtin_root))}
    problems = []
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            problems.append(f"--dataset {spec}: expected NAME=PATH")
            continue
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            problems.append(f"--dataset {spec}: a name is letters, digits, '_', '.', '-'")
            continue
        root = Path(path).expanduser().resolve()
        if not root.is_dir():
            problems.append(f"--dataset {spec}: {root} is not a directory")
            continue
        found[name] = Dataset(name, name if name in KINDS else "imagefolder", str(root))
    if problems:
        raise UserError(*problems)
    return found


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServerConfig:
    home: Path = field(default_factory=default_home)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    db_url: str | None = None  # any SQLAlchemy URL; None: sqlite:///<home>/jobs.db
    datasets: dict[str, Dataset] = field(default_factory=lambda: parse_datasets(None))
    ray_address: str | None = None  # None: start a local Ray (the embedded default)
    ray_cpus: int | None = None  # the local Ray's CPUs (None: all of this machine's)
    cpus_per_job: int = 1  # what a CPU job asks Ray for; a cuda job asks for 1 GPU besides
    max_attempts: int = 3  # a job whose worker dies is retried from its last checkpoint up to this many attempts
    max_upload_bytes: int = 2 * 1024**3  # a token's own limit (token create --max-upload-mb) replaces it
    max_queued_per_token: int = 100  # queued jobs a token may have at once (0: no limit); a token's own replaces it
    job_timeout_seconds: int | None = None  # running time a job may take over all its attempts (None: no limit)
    retention_days: float = 30.0  # finished jobs (files and rows) are removed this long after they finished (0: never)
    retention_every: float = 600.0  # seconds between retention sweeps
    artifacts_url: str | None = None  # any fsspec URL (s3://bucket/prefix); None: the home directory
    artifacts_endpoint: str | None = None  # an S3-compatible store's endpoint URL (else $AWS_ENDPOINT_URL, AWS)
    poll_seconds: float = 0.25  # the dispatcher's round: progress drained, finished attempts collected, jobs started
    heartbeat_seconds: float = 2.0  # how often the server beats, takes over lost jobs and enforces stops
    lease_seconds: float = 30.0  # a server that has not beaten for this long is gone: its jobs are re-queued
    handover_seconds: float = 60.0  # how long a stopping server waits for its workers to save their state

    @property
    def url(self) -> str:
        return self.db_url or f"sqlite:///{self.home / 'jobs.db'}"

    @property
    def store_url(self) -> str:
        return self.artifacts_url or str(self.home)

    def artifacts(self):
        from compressor.service.artifacts import Artifacts, store_options

        endpoint = self.artifacts_endpoint or os.environ.get("AWS_ENDPOINT_URL")
        return Artifacts(self.store_url, store_options(self.store_url, endpoint), spool=self.home / "uploads")

    def prepare(self) -> None:
        for folder in (self.home, self.home / "uploads"):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"--home: cannot create {folder} ({e.strerror})") from None
