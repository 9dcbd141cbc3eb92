"""The API's schema: pydantic models for what a client sends and what the server answers (the served OpenAPI
document is generated from them)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from compressor.service.artifacts import LocalArtifacts
from compressor.service.store import EXIT_CODES, FINISHED, Job


class SubmitRequest(BaseModel):
    """POST /v1/jobs. The teacher is named by the sha256 of a file uploaded with PUT /v1/teachers/{sha256}."""

    model_config = ConfigDict(extra="forbid")
    teacher_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    recipe: str = Field(description="the recipe YAML, as `compress distill --recipe` reads it")
    overrides: list[str] = Field(default_factory=list, description="`--set dotted.key=value` overrides",
                                 max_length=200)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
                                        description="the same key twice (per token) -> the same job, never two")


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
    resources: dict
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
            overrides=job.overrides or [], device=job.device, resources={"CPU": job.num_cpus, "GPU": job.num_gpus},
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
    def listing(cls, store: LocalArtifacts, job_id: str) -> list[ArtifactOut]:
        return [cls(name=a["name"], size=a["size"], url=f"/v1/jobs/{job_id}/artifacts/{a['name']}")
                for a in store.list(job_id)]


class Problem(BaseModel):
    """Every 4xx answer: `detail` is the one-line message (several lines for a recipe with several problems)."""

    detail: str
    problems: list[str]
