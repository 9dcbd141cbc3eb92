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


# ports a `ray start` node takes by default besides the one it is given (dashboard 8265, its agent 52365, the
# client server 10001, the workers 10002-19999): a head given one of them refuses to start
RAY_DEFAULT_PORTS = {6379, 8265, 10001, 52365, *range(10002, 20000)}


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RAY_DEFAULT_PORTS:
            return port


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


def end_session(sid: int, sig: int = signal.SIGKILL) -> None:
    """Signal every process of the session `sid` (what a `ray start --block` started lives in its session)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry)) == sid and int(entry) != os.getpid():
                    os.kill(int(entry), sig)


class RayNode:
    """A node of a real Ray cluster, started as an operator starts one: `ray start --head` or `ray start --address
    ...`, with token authentication, in a session of its own (`--block`, so its processes can be found and ended).
    `env` reaches the node's workers (COMPRESSOR_SCRATCH: the node's own folder; the S3 credentials)."""

    def __init__(self, root: Path, name: str, env: dict, *, head_port: int | None = None, address: str | None = None,
                 cpus: int = 1, resources: dict | None = None):
        self.root, self.name, self.env = root, name, env
        self.head_port, self.address, self.cpus, self.resources = head_port, address, cpus, resources or {}
        self.proc = None

    def start(self) -> RayNode:
        import json

        exe = str(Path(sys.executable).with_name("ray"))
        cmd = [exe, "start", "--block", "--num-cpus", str(self.cpus), "--disable-usage-stats",
               "--resources", json.dumps({"node_" + self.name: 1, **self.resources})]
        if self.head_port:
            cmd += ["--head", "--port", str(self.head_port), "--node-ip-address", "127.0.0.1",
                    "--include-dashboard", "false", "--temp-dir", str(self.root / "ray")]
        else:
            cmd += ["--address", self.address]
        self.log = open(self.root / f"ray-{self.name}.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=self.env)
        return self

    def raylet_pid(self) -> int:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.getsid(int(entry)) == self.proc.pid and \
                            Path(f"/proc/{entry}/comm").read_text().strip() == "raylet":
                        return int(entry)
        raise AssertionError(f"no raylet in node {self.name}'s session")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        end_session(self.proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def wait_for_nodes(address: str, env: dict, names: list[str], timeout: float = 120,
                   log_dir: Path | None = None) -> None:
    """Until the cluster at `address` has the named nodes alive (asked by a separate driver process); on failure,
    the tail of each node's `ray start` output in `log_dir`."""
    code = ("import ray, sys, time\n"
            f"ray.init(address={address!r}, log_to_driver=False)\n"
            f"want = {['node_' + n for n in names]!r}\n"
            f"deadline = time.time() + {timeout}\n"
            "while time.time() < deadline:\n"
            "    alive = [r for n in ray.nodes() if n['Alive'] for r in n['Resources']]\n"
            "    if all(w in alive for w in want): sys.exit(0)\n"
            "    time.sleep(0.5)\n"
            "sys.exit(1)\n")
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=timeout + 60)
        problem = None if r.returncode == 0 else r.stderr[-2000:]
    except subprocess.TimeoutExpired as e:
        problem = f"no answer in {timeout + 60} s: {(e.stderr or b'')[-1000:]!r}"
    if problem:
        logs = "".join(f"\n--- {n}:\n{n.read_text(errors='replace')[-1500:]}"
                       for n in sorted((log_dir or Path("/nonexistent")).glob("ray-*.log")))
        raise AssertionError(f"the Ray cluster did not show nodes {names}: {problem}{logs}")
