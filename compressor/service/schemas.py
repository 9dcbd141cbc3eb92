"""The API's schema: pydantic models for what a client sends and what the server answers (the served OpenAPI
document is generated from them)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field, field_validator

from compressor.service.artifacts import Artifacts
from compressor.service.store import EXIT_CODES, FINISHED, Job

RAY_OWN = ("CPU", "GPU", "memory", "object_store_memory")  # Ray's own resources: not worker kinds


class Resources(BaseModel):
    """What the job asks the cluster for besides what its recipe implies (a GPU when its device is cuda)."""

    model_config = ConfigDict(extra="forbid")
    cpus: int | None = Field(None, ge=1, le=1024, description="CPUs (default: the server's --cpus-per-job)")
    memory_gb: float | None = Field(None, gt=0, le=1 << 16, description="memory Ray reserves for the job, GiB")
    worker: str | None = Field(None, pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$",
                               description="a worker kind: the job runs only on nodes started with this Ray custom "
                                           "resource (ray start --resources '{\"a100\": 1}')")

    @field_validator("worker")
    @classmethod
    def _not_ray_own(cls, value: str | None) -> str | None:
        if value is not None and (value in RAY_OWN or value.startswith("node:")):
            raise ValueError(f"{value!r} is one of Ray's own resources, not a worker kind")
        return value


class SubmitRequest(BaseModel):
    """POST /v1/jobs. The teacher is named by the sha256 of a file uploaded with PUT /v1/teachers/{sha256}."""

    model_config = ConfigDict(extra="forbid")
    teacher_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    recipe: str = Field(description="the recipe YAML, as `compress distill --recipe` reads it")
    overrides: list[str] = Field(default_factory=list, description="`--set dotted.key=value` overrides",
                                 max_length=200)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
                                        description="the same key twice (per token) -> the same job, never two")
    resources: Resources = Field(default_factory=Resources)
    timeout_minutes: float | None = Field(None, gt=0, le=525600, description="running time allowed over all "
                                          "attempts (at most the server's --job-timeout-minutes)")


class TeacherOut(BaseModel):
    sha256: str
    size: int
    filename: str
    format: str


class AttemptOut(BaseModel):
    number: int
    resume: bool
    pid: int | None
    node: str | None
    started_at: dt.datetime
    ended_at: dt.datetime | None
    outcome: str | None
    message: str | None


class JobOut(BaseModel):
    id: str
    state: str = Field(description="queued | running | succeeded | gate_failed | rejected | failed | cancelled")
    reason: str = Field(description="why the job is in its state, for a person")
    finished: bool
    exit_code: int | None = Field(None, description="what `compress distill` would have exited with")
    problems: list[str]
    owner: str
    teacher_sha256: str
    teacher_name: str
    recipe_name: str
    dataset: str
    overrides: list[str]
    device: str
    resources: dict = Field(description="what the job asks Ray for: CPU, GPU, memory (bytes), a worker kind")
    timeout_seconds: int | None
    attempts: int
    max_attempts: int
    attempt_history: list[AttemptOut]
    cancel_requested: bool
    progress: dict | None
    last_metrics: dict | None
    summary: dict | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    links: dict

    @classmethod
    def of(cls, job: Job) -> JobOut:
        base = f"/v1/jobs/{job.id}"
        return cls(
            id=job.id, state=job.state, reason=job.reason, finished=job.state in FINISHED,
            exit_code=job.exit_code if job.exit_code is not None else
            (EXIT_CODES[job.state] if job.state in FINISHED else None),
            problems=job.problems or [], owner=job.owner.name, teacher_sha256=job.teacher_sha256,
            teacher_name=job.teacher_name, recipe_name=job.recipe_name, dataset=job.dataset,
            overrides=job.overrides or [], device=job.device, resources=job.needs, timeout_seconds=job.timeout_seconds,
            attempts=job.attempts, max_attempts=job.max_attempts,
            attempt_history=[AttemptOut.model_validate(a, from_attributes=True) for a in job.runs],
            cancel_requested=job.cancel_requested, progress=job.progress, last_metrics=job.last_metrics,
            summary=job.summary, created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
            links={"self": base, "events": f"{base}/events", "log": f"{base}/log", "artifacts": f"{base}/artifacts",
                   "report": f"{base}/report", "page": f"/jobs/{job.id}"},
        )


class ArtifactOut(BaseModel):
    name: str
    size: int
    url: str

    @classmethod
    def listing(cls, store: Artifacts, job_id: str) -> list[ArtifactOut]:
        return [cls(name=a["name"], size=a["size"], url=f"/v1/jobs/{job_id}/artifacts/{a['name']}")
                for a in store.list(job_id)]


class Problem(BaseModel):
    """Every 4xx answer: `detail` is the one-line message (several lines for a recipe with several problems)."""

    detail: str
    problems: list[str]
