"""The /v1 API, by resource: health, teachers (content-addressed uploads), jobs (submit, list, show, cancel,
delete, artifacts, report). Progress, the event stream and the log are in `events`.

    GET    /v1/health                              no token needed
    HEAD   /v1/teachers/{sha256}                   200 if the server has it, else 404 (ask before uploading)
    PUT    /v1/teachers/{sha256}?filename=NAME     the file as the body; 201 stored, 200 already there
    POST   /v1/jobs                                SubmitRequest -> 201 the job (200: the same idempotency key again)
    GET    /v1/jobs[?state=S]                      the caller's jobs (an admin's: everyone's)
    GET    /v1/jobs/{id}                           state, reason, attempts, progress, summary
    POST   /v1/jobs/{id}/cancel                    202; 409 when it already finished
    DELETE /v1/jobs/{id}                           204, the job and its files; 409 while it runs
    GET    /v1/jobs/{id}/artifacts[/{name}]        the listing / one file
    GET    /v1/jobs/{id}/report                    report.json, typed
"""

from __future__ import annotations

import contextlib
import json

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from compressor.core.errors import UserError
from compressor.service import intake
from compressor.service.app import ApiError, caller, visible_job
from compressor.service.artifacts import HashMismatch, UploadTooLarge
from compressor.service.auth import Caller
from compressor.service.config import version
from compressor.service.reports import Report, read_report
from compressor.service.schemas import ArtifactOut, JobOut, SubmitRequest, TeacherOut
from compressor.service.store import STATES, Job, Teacher, new_job_id

router = APIRouter(prefix="/v1")


@router.get("/health", tags=["health"])
def health(request: Request) -> dict:
    runner = request.app.state.runner
    return {"status": "ok", "version": version(), "jobs_run": runner is not None}


# teachers ---------------------------------------------------------------------------------------------------------
def _sha(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ApiError(400, f"{sha256[:80]!r}: a teacher is named by its sha256, 64 lowercase hex digits")
    return sha256


@router.head("/teachers/{sha256}", tags=["teachers"])
@router.get("/teachers/{sha256}", tags=["teachers"], response_model=TeacherOut)
def get_teacher(sha256: str, request: Request, who: Caller = Depends(caller)):
    with request.app.state.store.session() as s:
        row = s.get(Teacher, _sha(sha256))
        if row is None:
            raise ApiError(404, f"teacher {sha256} not on this server; upload it with PUT /v1/teachers/{sha256}")
        return TeacherOut.model_validate(row, from_attributes=True)


@router.put("/teachers/{sha256}", tags=["teachers"], response_model=TeacherOut, status_code=201)
async def put_teacher(sha256: str, request: Request, response: Response, filename: str = "teacher.pt",
                      who: Caller = Depends(caller)):
    """Stream the body to disk under the size limit, check its sha256 and that it loads weights-only."""
    app, sha = request.app, _sha(sha256)
    limit = app.state.cfg.max_upload_bytes
    shown = filename.replace("/", "_").replace("\\", "_")[:200] or "teacher.pt"
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"{shown}: {int(declared)} bytes is over this server's upload limit of {limit} bytes")
    with app.state.store.session() as s:
        row = s.get(Teacher, sha)
        if row is not None:
            response.status_code = 200
            return TeacherOut.model_validate(row, from_attributes=True)
    artifacts = app.state.artifacts
    try:
        tmp = await _receive(artifacts, request, sha, limit)
    except UploadTooLarge:
        raise ApiError(413, f"{shown}: over this server's upload limit of {limit} bytes") from None
    except HashMismatch as e:
        raise ApiError(422, f"{shown}: its sha256 is {e.got}, not {sha} as the URL says (a truncated upload?)") from None
    try:
        fmt = await run_in_threadpool(intake.check_teacher, tmp, shown)
    except UserError as e:
        artifacts.discard(tmp)
        raise ApiError(422, *e.problems) from None
    artifacts.keep_teacher(tmp, sha)
    with app.state.store.session() as s:
        if s.get(Teacher, sha) is None:
            s.add(Teacher(sha256=sha, size=artifacts.teacher_path(sha).stat().st_size, filename=shown, format=fmt,
                          uploaded_by=who.id))
        return TeacherOut.model_validate(s.get(Teacher, sha), from_attributes=True)


async def _receive(artifacts, request: Request, sha: str, limit: int):
    upload = artifacts.upload(limit)
    try:
        async for chunk in request.stream():
            upload.write(chunk)
    except BaseException:
        upload.abort()
        raise
    return upload.finish(sha)


# jobs -------------------------------------------------------------------------------------------------------------
@router.post("/jobs", tags=["jobs"], response_model=JobOut, status_code=201)
async def submit(request: Request, response: Response, who: Caller = Depends(caller)):
    """Validate and queue a job; the same idempotency key with the same request answers the first job (200)."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise ApiError(422, "request: the body is not JSON (a SubmitRequest: teacher_sha256, recipe, overrides, "
                            "idempotency_key)") from None
    if not isinstance(body, dict):
        raise ApiError(422, "request: expected a JSON object")
    refused = [f"{key}: {why}" for key, why in intake.SERVER_ONLY.items() if key in body]
    if refused:
        raise ApiError(422, *refused)
    try:
        req = SubmitRequest.model_validate(body)
    except ValidationError as e:
        raise ApiError(422, *[f"{'.'.join(map(str, err['loc'])) or 'request'}: {err['msg']}" for err in e.errors()])
    return await run_in_threadpool(_submit, request.app, who, req, response)


def _submit(app, who: Caller, req: SubmitRequest, response: Response) -> JobOut:
    store, runner = app.state.store, app.state.runner
    digest = intake.request_hash(req.teacher_sha256, req.recipe, req.overrides)
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
    gpus = runner.gpus() if runner is not None else 0.0
    try:
        accepted = intake.check_recipe(req.recipe, req.overrides, app.state.cfg.datasets, gpus)
    except UserError as e:
        raise ApiError(422, *e.problems) from None
    job_id, cfg = new_job_id(), app.state.cfg
    try:
        with store.session() as s:
            s.add(Job(id=job_id, token_id=who.id, idempotency_key=req.idempotency_key, request_hash=digest,
                      teacher_sha256=req.teacher_sha256, teacher_name=teacher_name, recipe_yaml=req.recipe,
                      overrides=req.overrides, recipe=accepted.recipe.model_dump(mode="json"),
                      recipe_name=accepted.recipe.name, dataset=accepted.dataset, device=accepted.device,
                      num_cpus=cfg.cpus_per_job, num_gpus=accepted.num_gpus, state="queued",
                      reason="waiting for the dispatcher to find it a worker", max_attempts=cfg.max_attempts,
                      attempts=0, progress_seq=0, problems=[]))
    except IntegrityError:  # the same key submitted twice at the same moment: the other one won
        existing = _same_key(store, who, req.idempotency_key, digest)
        if existing is None:
            raise
        response.status_code = 200
        return existing
    app.state.artifacts.write_request(job_id, req.recipe)
    with store.session() as s:
        return JobOut.of(s.get(Job, job_id))


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


@router.get("/jobs", tags=["jobs"], response_model=list[JobOut])
def list_jobs(request: Request, state: str | None = None, limit: int = 200, who: Caller = Depends(caller)):
    if state is not None and state not in STATES:
        raise ApiError(400, f"state: {state!r} is not one of {', '.join(STATES)}")
    store = request.app.state.store
    with store.session() as s:
        jobs = store.jobs(s, token_id=None if who.admin else who.id, states=(state,) if state else None,
                          limit=max(1, min(limit, 1000)))
        return [JobOut.of(j) for j in jobs]


@router.get("/jobs/{job_id}", tags=["jobs"], response_model=JobOut)
def get_job(job_id: str, request: Request, who: Caller = Depends(caller)):
    with request.app.state.store.session() as s:
        return JobOut.of(visible_job(request, who, job_id, s))


@router.post("/jobs/{job_id}/cancel", tags=["jobs"], response_model=JobOut, status_code=202)
def cancel(job_id: str, request: Request, who: Caller = Depends(caller)):
    app = request.app
    with app.state.store.session() as s:
        job = visible_job(request, who, job_id, s)
        if job.finished:
            raise ApiError(409, f"job {job_id} already finished ({job.state}); there is nothing to cancel")
    if app.state.runner is None:
        raise ApiError(503, "this server runs no jobs")
    app.state.runner.cancel(job_id, who.name)
    with app.state.store.session() as s:
        return JobOut.of(s.get(Job, job_id))


@router.delete("/jobs/{job_id}", tags=["jobs"], status_code=204)
def delete(job_id: str, request: Request, who: Caller = Depends(caller)):
    app = request.app
    lock = app.state.runner.lock if app.state.runner is not None else contextlib.nullcontext()
    with lock, app.state.store.session() as s:
        job = visible_job(request, who, job_id, s)
        if not job.finished:
            raise ApiError(409, f"job {job_id} is {job.state}; cancel it first (POST /v1/jobs/{job_id}/cancel)")
        s.delete(job)
    app.state.artifacts.delete_job(job_id)
    return Response(status_code=204)


@router.get("/jobs/{job_id}/artifacts", tags=["jobs"], response_model=list[ArtifactOut])
def artifacts(job_id: str, request: Request, who: Caller = Depends(caller)):
    with request.app.state.store.session() as s:
        visible_job(request, who, job_id, s)
    return ArtifactOut.listing(request.app.state.artifacts, job_id)


@router.get("/jobs/{job_id}/artifacts/{name:path}", tags=["jobs"])
def artifact(job_id: str, name: str, request: Request, who: Caller = Depends(caller)):
    with request.app.state.store.session() as s:
        visible_job(request, who, job_id, s)
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or ".." in parts or "" in parts or any(p.startswith(".") for p in parts) or "\0" in name:
        raise ApiError(400, f"artifact name {name[:200]!r}: a name from the job's listing (no '..', no absolute or "
                            "hidden path)")
    path = request.app.state.artifacts.artifact(job_id, name)
    if path is None:
        raise ApiError(404, f"job {job_id} has no artifact {name[:200]!r} (GET /v1/jobs/{job_id}/artifacts lists them)")
    return FileResponse(path, filename=path.name)


@router.get("/jobs/{job_id}/report", tags=["jobs"], response_model=Report)
def report(job_id: str, request: Request, who: Caller = Depends(caller)):
    with request.app.state.store.session() as s:
        job = visible_job(request, who, job_id, s)
        state = job.state
    found = read_report(request.app.state.artifacts.out_dir(job_id))
    if found is None:
        raise ApiError(404, f"job {job_id} has no report ({state})")
    return Report.model_validate(found)
