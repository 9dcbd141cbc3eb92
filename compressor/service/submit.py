"""A job's submission, after the request's shape is checked (`routes.submit`): the same idempotency key is the
same job; the recipe is checked (`intake`); the job's resources are worked out (`placement`) and, on the embedded Ray,
refused when this machine can never give them; the token's quota of queued jobs holds however many servers take
submissions at once (the token's row is locked first); the timeout is at most the server's.
"""

from __future__ import annotations

from fastapi import Response
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from compressor.core.errors import UserError
from compressor.service import intake
from compressor.service.deps import ApiError
from compressor.service.auth import Caller
from compressor.service.placement import describe, needs_of
from compressor.service.schemas import JobOut, SubmitRequest
from compressor.service.store import Job, Teacher, Token, new_job_id, now


def submit_job(app, who: Caller, req: SubmitRequest, response: Response) -> JobOut:
    store, runner, cfg = app.state.store, app.state.runner, app.state.cfg
    digest = intake.request_hash(req.teacher_sha256, req.recipe, req.overrides, req.resources, req.timeout_minutes)
    existing = _same_key(store, who, req.idempotency_key, digest)
    if existing is not None:
        response.status_code = 200
        return existing
    with store.session() as s:
        teacher = s.get(Teacher, req.teacher_sha256)
        if teacher is None:
            raise ApiError(422, f"teacher_sha256: teacher {req.teacher_sha256} is not on this server; upload it "
                                f"first (PUT /v1/teachers/{req.teacher_sha256})")
        teacher_name = teacher.filename
    cluster = runner.cluster() if runner is not None else None
    try:
        accepted = intake.check_recipe(req.recipe, req.overrides, cfg.datasets, cluster.total("GPU") if cluster else 0,
                                       gpu_may_join=bool(cfg.ray_address))
    except UserError as e:
        raise ApiError(422, *e.problems) from None
    res = req.resources
    needs = needs_of(res.cpus or cfg.cpus_per_job, accepted.num_gpus, res.memory_gb, res.worker)
    if cluster is not None and not cfg.ray_address and not cluster.feasible(needs):
        # the embedded Ray is this machine: what it lacks now it will never have
        raise ApiError(422, f"resources: this server runs jobs on this machine alone, which cannot give "
                            f"{describe(needs)} ({cluster.infeasible_reason(needs).split(': ', 1)[1]})")
    timeout = _timeout(cfg, req.timeout_minutes)
    job_id = new_job_id()

    def insert(s) -> None:
        # the token's row first: a lock on it (its submits one at a time, so the quota holds under concurrency)
        s.execute(update(Token).where(Token.id == who.id).values(id=Token.id))
        token = s.get(Token, who.id)
        limit = token.max_queued if token.max_queued is not None else cfg.max_queued_per_token
        if limit:
            queued = s.scalar(select(func.count()).select_from(Job).where(Job.token_id == who.id,
                                                                          Job.state == "queued"))
            if queued >= limit:
                raise ApiError(429, f"quota: {queued} of your jobs are queued, the most this server allows a token "
                                    f"({limit}); wait for some to start, or cancel some")
        s.execute(update(Teacher).where(Teacher.sha256 == req.teacher_sha256).values(last_used_at=now()))
        s.add(Job(id=job_id, token_id=who.id, idempotency_key=req.idempotency_key, request_hash=digest,
                  teacher_sha256=req.teacher_sha256, teacher_name=teacher_name, recipe_yaml=req.recipe,
                  overrides=req.overrides, recipe=accepted.recipe.model_dump(mode="json"),
                  recipe_name=accepted.recipe.name, dataset=accepted.dataset, device=accepted.device,
                  num_cpus=int(needs["CPU"]), num_gpus=accepted.num_gpus, resources=needs, timeout_seconds=timeout,
                  state="queued", reason="waiting for the dispatcher to find it a worker",
                  max_attempts=cfg.max_attempts, attempts=0, progress_seq=0, problems=[]))

    try:
        app.state.artifacts.write_request(job_id, req.recipe)
        store.write(insert)
    except ApiError:
        app.state.artifacts.delete_job(job_id)
        raise
    except IntegrityError:  # the same key submitted twice at the same moment: the other one won
        app.state.artifacts.delete_job(job_id)
        existing = _same_key(store, who, req.idempotency_key, digest)
        if existing is None:
            raise
        response.status_code = 200
        return existing
    with store.session() as s:
        return JobOut.of(s.get(Job, job_id))


def _timeout(cfg, minutes: float | None) -> int | None:
    """The job's timeout in seconds: the request's, at most the server's."""
    limit = cfg.job_timeout_seconds
    if minutes is None:
        return limit
    asked = int(minutes * 60)
    if limit is not None and asked > limit:
        raise ApiError(422, f"timeout_minutes: {minutes:g} is over this server's job timeout of {limit / 60:g} min")
    return asked


def _same_key(store, who: Caller, key: str | None, digest: str) -> JobOut | None:
    if key is None:
        return None
    with store.session() as s:
        job = s.scalar(select(Job).where(Job.token_id == who.id, Job.idempotency_key == key))
        if job is None:
            return None
        if job.request_hash != digest:
            raise ApiError(409, f"idempotency_key {key!r} was used for job {job.id} with a different request "
                                "(teacher, recipe or overrides); use a new key for a new job")
        return JobOut.of(job)
