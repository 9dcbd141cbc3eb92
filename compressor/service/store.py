"""The durable job store: SQLAlchemy models and the sessions the API and the dispatcher share.

A SQLite file under the server's home by default, any SQLAlchemy URL otherwise. The schema is versioned by the
Alembic migrations in `migrations/` (run on every start, so an upgrade keeps old jobs); `tests/test_service_store.py`
checks that the migrations and these models agree.

Tables: `tokens` (bearer tokens, stored as sha256), `teachers` (uploads, content-addressed), `jobs` (a job's
request, state and reason, progress, summary) and `attempts` (each time a worker ran it: pid, outcome).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint, create_engine,
                        event, select)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

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


class Teacher(Base):
    __tablename__ = "teachers"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)  # bytes; uploads may pass 2 GiB
    filename: Mapped[str] = mapped_column(String(255))  # the first uploader's file name, shown on pages
    format: Mapped[str] = mapped_column(String(40))  # "compressor checkpoint" | "state_dict"
    uploaded_by: Mapped[int] = mapped_column(ForeignKey("tokens.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)


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

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


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
    outcome: Mapped[str | None] = mapped_column(String(40), nullable=True)  # a state, or lost / worker died
    message: Mapped[str | None] = mapped_column(Text, nullable=True)


def new_job_id() -> str:
    return "j" + secrets.token_hex(6)


class Store:
    """The engine and a session factory; `session()` commits on success and rolls back on error."""

    def __init__(self, url: str):
        self.url = url
        sqlite = url.startswith("sqlite")
        self.engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30} if sqlite else {})
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self) -> None:
        from compressor.service.migrations import upgrade

        upgrade(self.engine)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s, s.begin():
            yield s

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
