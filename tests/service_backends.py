"""The service's real backends for tests: a PostgreSQL server (Debian's `postgresql`, which `make test` installs:
initdb + pg_ctl in a temporary folder, listening on 127.0.0.1 only) and an S3 API server (moto's standalone
server, from the dev extra, on 127.0.0.1). Neither is mocked, and neither is skipped: a machine without them
fails these tests, saying what to install."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

S3_ENV = {"AWS_ACCESS_KEY_ID": "compressor-test", "AWS_SECRET_ACCESS_KEY": "compressor-test-secret",
          "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    pytest.fail("PostgreSQL's initdb not found: install Debian's postgresql package (make test does: apt-get "
                "install postgresql)")


class Postgres:
    """A throwaway PostgreSQL cluster: `url(db)` for each database a test creates."""

    def __init__(self):
        self.bin = pg_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="compressor-pg-"))  # under /tmp: the postgres user must reach it
        self.data, self.port = self.root / "data", free_port()
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")

    def start(self) -> Postgres:
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8",
                  "--no-sync")
        options = f"-k {self.root} -c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off -c max_connections=200"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "pg.log"),
                  "-w", "-t", "60", "start")
        return self

    def _run(self, *cmd: str) -> None:
        r = subprocess.run([*self.as_postgres, *cmd], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")

    def create(self, name: str | None = None) -> str:
        """A new database; its SQLAlchemy URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres",
                             autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run([*self.as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                        "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


class S3Server:
    """moto's standalone S3 API server on 127.0.0.1; `bucket()` makes a new bucket and returns its s3:// URL."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> S3Server:
        exe = Path(sys.executable).with_name("moto_server")
        if not exe.exists():
            pytest.fail("moto_server not found: pip install 'moto[server]' (it is in the dev extra)")
        self.log = tempfile.NamedTemporaryFile("w+", prefix="moto-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **S3_ENV})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2).close()
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"moto_server did not start:\n{Path(self.log.name).read_text()[-2000:]}")

    def bucket(self, name: str | None = None) -> str:
        import boto3

        name = name or f"b-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, **{k.lower(): v for k, v in S3_ENV.items()
                                                          if k != "AWS_DEFAULT_REGION"},
                     region_name=S3_ENV["AWS_DEFAULT_REGION"]).create_bucket(Bucket=name)
        return f"s3://{name}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def s3_env():
    """The S3 credentials moto accepts, in this process's environment (s3fs reads them there)."""
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
