"""The durable job store: SQLAlchemy models and the transactions the API and the dispatchers share.

A SQLite file under the server's home by default, any SQLAlchemy URL otherwise (PostgreSQL for several servers:
`postgresql+psycopg://...`). The schema is versioned by the Alembic migrations in `migrations/` (run on every
start, so an upgrade keeps old jobs); `tests/test_service_store.py` checks that the migrations and these models
agree, on SQLite and on a real PostgreSQL.

Tables: `tokens` (bearer tokens, stored as sha256, with their quotas), `teachers` (uploads, content-addressed),
`jobs` (a job's request, resources, state and reason, progress, summary, the server running it), `attempts` (each
time a worker ran it: pid, node, outcome), `servers` (each running `compress serve` and its heartbeat: a job whose
server stopped beating is taken over) and `locks` (one row per lock that several servers share).

Concurrency: several servers (and each server's API threads and dispatcher) change the same rows. No update is
lost: a job row carries a `version` that every UPDATE checks (SQLAlchemy's version counter: an UPDATE that finds
another version changes nothing and raises), and `Store.write` runs a transaction again from the start when a
concurrent writer got there first (that, a lock SQLite could not take, or PostgreSQL's serialization failure or
deadlock). Whoever starts jobs takes the `dispatch` lock row first (`lock`), so two dispatchers never start the
same job or overfill the cluster; `tests/test_service_store.py` runs both races on SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint,
                        create_engine, event, false, select, update)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

T = TypeVar("T")

# queued -> running -> succeeded | gate_failed | rejected | failed | cancelled (running -> queued on a retry)
STATES = ("queued", "running", "succeeded", "gate_failed", "rejected", "failed", "cancelled")
FINISHED = ("succeeded", "gate_failed", "rejected", "failed", "cancelled")
EXIT_CODES = {"succeeded": 0, "gate_failed": 1, "rejected": 2, "failed": 1, "cancelled": 130}


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # stored naive, always UTC


class Base(DeclarativeBase):
    pass


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the token: never the token
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)
    # quotas of this token; None: the server's defaults (--max-queued-per-token, --max-upload-mb)
    max_queued: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_upload_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Teacher(Base):
    __tablename__ = "teachers"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)  # bytes; uploads may pass 2 GiB
    filename: Mapped[str] = mapped_column(String(255))  # the first uploader's file name, shown on pages
    format: Mapped[str] = mapped_column(String(40))  # "compressor checkpoint" | "state_dict"
    uploaded_by: Mapped[int] = mapped_column(ForeignKey("tokens.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)  # its last job's submission


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("token_id", "idempotency_key", name="uq_jobs_token_key"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id"), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str] = mapped_column(String(64))  # the same key with another request is refused
    teacher_sha256: Mapped[str] = mapped_column(ForeignKey("teachers.sha256"))
    teacher_name: Mapped[str] = mapped_column(String(255))
    recipe_yaml: Mapped[str] = mapped_column(Text)  # as the client sent it
    overrides: Mapped[list] = mapped_column(JSON, default=list)
    recipe: Mapped[dict] = mapped_column(JSON)  # validated, with the server's data.root: what the worker runs
    recipe_name: Mapped[str] = mapped_column(String(200))
    dataset: Mapped[str] = mapped_column(String(100))
    device: Mapped[str] = mapped_column(String(10))  # cpu | cuda, decided at submit
    num_cpus: Mapped[int] = mapped_column(Integer)
    num_gpus: Mapped[int] = mapped_column(Integer)
    # what the job asks Ray for: CPU, GPU, memory (bytes) and custom resources (a worker kind); None in rows
    # stored before it existed: {CPU: num_cpus, GPU: num_gpus}
    resources: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    timeout_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)  # running time allowed, all attempts
    timed_out: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    server_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)  # whose dispatcher runs it
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # checked by every UPDATE
    state: Mapped[str] = mapped_column(String(20), index=True)
    reason: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # started so far
    max_attempts: Mapped[int] = mapped_column(Integer)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    problems: Mapped[list] = mapped_column(JSON, default=list)  # the job's own one-line messages, when it ended badly
    progress: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the last ProgressEvent, as a dict
    last_metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the last epoch's metrics.jsonl row
    progress_seq: Mapped[int] = mapped_column(Integer, default=0)  # bumped on every progress update
    summary: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # from report.json when it finished
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    owner: Mapped[Token] = relationship(lazy="joined")
    runs: Mapped[list[Attempt]] = relationship(order_by="Attempt.number", cascade="all, delete-orphan",
                                               lazy="selectin")
    __mapper_args__ = {"version_id_col": version}

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def needs(self) -> dict[str, float]:
        """The Ray resources the job asks for."""
        if self.resources:
            return dict(self.resources)
        return {k: v for k, v in (("CPU", self.num_cpus), ("GPU", self.num_gpus)) if v}

    @property
    def failed_attempts(self) -> int:
        """Attempts that ended without an outcome (the worker died, the server was lost): a job fails after
        max_attempts of them. An attempt handed over by a server that stopped in order does not count."""
        return sum(1 for run in self.runs if run.outcome in LOST)


class Attempt(Base):
    __tablename__ = "attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 1-based
    resume: Mapped[bool] = mapped_column(Boolean)  # started with resume=True (from the last checkpoint)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the Ray worker's process, once it reported
    node: Mapped[str | None] = mapped_column(String(200), nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(40), nullable=True)  # a state, or died / lost / handed over
    message: Mapped[str | None] = mapped_column(Text, nullable=True)


LOST = ("died", "lost", "interrupted")  # attempt outcomes that count against max_attempts


class Server(Base):
    """A running `compress serve`: its dispatcher beats every few seconds; the jobs of one whose heartbeat is older
    than the lease (or of a dead process on the same host) are re-queued by any other."""

    __tablename__ = "servers"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(String(255))
    engine: Mapped[str] = mapped_column(String(255))  # the Ray it runs jobs on
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)


class Lock(Base):
    """A named lock several servers share: a transaction that updates the row holds it until it ends (a row lock
    on PostgreSQL, the write lock on SQLite)."""

    __tablename__ = "locks"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(32), nullable=True)
    taken_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


def new_job_id() -> str:
    return "j" + secrets.token_hex(6)


def retryable(e: BaseException) -> bool:
    """A transaction that lost a race and may simply run again: a stale version, SQLite's lock, PostgreSQL's
    serialization failure, deadlock or lock timeout."""
    if isinstance(e, StaleDataError):
        return True
    if isinstance(e, DBAPIError):
        code = getattr(e.orig, "sqlstate", None) or getattr(e.orig, "pgcode", None)
        if code in ("40001", "40P01", "55P03"):
            return True
        text = str(e.orig).lower()
        return "database is locked" in text or "database is busy" in text
    return False


class Store:
    """The engine and a session factory; `session()` commits on success and rolls back on error; `write(fn)` is a
    session that runs again when it lost a race."""

    RETRIES = 12

    def __init__(self, url: str):
        self.url = url
        sqlite = url.startswith("sqlite")
        kwargs = {"connect_args": {"check_same_thread": False, "timeout": 30}} if sqlite else {
            "pool_pre_ping": True, "pool_size": 10, "max_overflow": 20}
        self.engine = create_engine(url, **kwargs)
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def kind(self) -> str:
        return self.engine.dialect.name  # sqlite | postgresql | ...

    def migrate(self) -> None:
        from compressor.service.migrations import upgrade

        upgrade(self.engine)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s, s.begin():
            yield s

    def write(self, fn: Callable[[Session], T]) -> T:
        """fn(session) in one transaction, run again from the start (a fresh session, fresh rows) when it lost a
        race with another writer; fn must have no effect outside the database."""
        for attempt in range(self.RETRIES):
            try:
                with self.session() as s:
                    return fn(s)
            except Exception as e:
                if not retryable(e) or attempt == self.RETRIES - 1:
                    raise
                time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    def lock(self, s: Session, name: str, holder: str) -> None:
        """Take the named lock for the rest of the transaction (others wait at this statement)."""
        s.execute(update(Lock).where(Lock.name == name).values(holder=holder, taken_at=now()))

    def job(self, s: Session, job_id: str) -> Job | None:
        return s.get(Job, job_id)

    def jobs(self, s: Session, *, token_id: int | None = None, states: tuple[str, ...] | None = None,
             limit: int | None = None) -> list[Job]:
        q = select(Job).order_by(Job.created_at.desc(), Job.id)
        if token_id is not None:
            q = q.where(Job.token_id == token_id)
        if states:
            q = q.where(Job.state.in_(states))
        if limit:
            q = q.limit(limit)
        return list(s.scalars(q))

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(conn, _record) -> None:
    """WAL lets the API read while the dispatcher writes; foreign keys on (SQLite leaves them off)."""
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def sqlite_path(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
