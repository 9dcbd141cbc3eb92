"""The /v1 API, by resource: health, teachers (content-addressed uploads), jobs (submit, list, show, cancel,
delete, artifacts, report). Progress, the event stream and the log are in `events`.

    GET    /v1/health                              no token needed
    HEAD   /v1/teachers/{sha256}                   200 if the server has it, else 404 (ask before uploading)
    PUT    /v1/teachers/{sha256}?filename=NAME     the file as the body; 201 stored, 200 already there
    POST   /v1/jobs                                SubmitRequest -> 201 the job (200: the same idempotency key again;
                                                   429: the token's queued jobs are at its quota)
    GET    /v1/jobs[?state=S]                      the caller's jobs (an admin's: everyone's)
    GET    /v1/jobs/{id}                           state, reason, attempts, progress, summary
    POST   /v1/jobs/{id}/cancel                    202; 409 when it already finished
    DELETE /v1/jobs/{id}                           204, the job and its files; 409 while it runs
    GET    /v1/jobs/{id}/artifacts[/{name}]        the listing / one file
    GET    /v1/jobs/{id}/report                    report.json, typed
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from compressor.core.errors import UserError
from compressor.service import intake
from compressor.service.deps import ApiError, caller, visible_job
from compressor.service.artifacts import HashMismatch, UploadTooLarge
from compressor.service.auth import Caller
from compressor.service.config import version
from compressor.service.reports import Report
from compressor.service.schemas import ArtifactOut, JobOut, SubmitRequest, TeacherOut
from compressor.service.store import STATES, Job, Teacher, Token
from compressor.service.submit import submit_job

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


def upload_limit(app, who: Caller) -> int:
    """The caller's upload limit: its token's own, else the server's."""
    with app.state.store.session() as s:
        own = s.get(Token, who.id).max_upload_bytes
    return own if own is not None else app.state.cfg.max_upload_bytes


@router.put("/teachers/{sha256}", tags=["teachers"], response_model=TeacherOut, status_code=201)
async def put_teacher(sha256: str, request: Request, response: Response, filename: str = "teacher.pt",
                      who: Caller = Depends(caller)):
    """Stream the body to the server's disk under the caller's size limit, check its sha256 and that it loads
    weights-only, then copy it to the artifact store (streamed, in parts)."""
    app, sha = request.app, _sha(sha256)
    limit = await run_in_threadpool(upload_limit, app, who)
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
    size = tmp.stat().st_size
    await run_in_threadpool(artifacts.keep_teacher, tmp, sha)
    return await run_in_threadpool(_teacher_row, app.state.store, sha, size, shown, fmt, who)


def _teacher_row(store, sha: str, size: int, shown: str, fmt: str, who: Caller) -> TeacherOut:
    try:
        with store.session() as s:
            if s.get(Teacher, sha) is None:
                s.add(Teacher(sha256=sha, size=size, filename=shown, format=fmt, uploaded_by=who.id))
    except IntegrityError:  # the same teacher uploaded through another server at the same moment
        pass
    with store.session() as s:
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
    return await run_in_threadpool(submit_job, request.app, who, req, response)


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
    from compressor.service.dispatch import cancel as cancel_job

    cancel_job(app.state.store, job_id, who.name)  # any server's API: the job's own server stops its worker
    with app.state.store.session() as s:
        return JobOut.of(s.get(Job, job_id))


@router.delete("/jobs/{job_id}", tags=["jobs"], status_code=204)
def delete(job_id: str, request: Request, who: Caller = Depends(caller)):
    app = request.app

    def drop(s) -> None:
        job = visible_job(request, who, job_id, s)
        if not job.finished:
            raise ApiError(409, f"job {job_id} is {job.state}; cancel it first (POST /v1/jobs/{job_id}/cancel)")
        s.delete(job)

    app.state.store.write(drop)
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
    artifacts = request.app.state.artifacts
    entry = artifacts.artifact(job_id, name)
    if entry is None:
        raise ApiError(404, f"job {job_id} has no artifact {name[:200]!r} (GET /v1/jobs/{job_id}/artifacts lists them)")
    filename = name.rsplit("/", 1)[-1]
    return StreamingResponse(artifacts.stream(entry["key"]), media_type=_media_type(filename),
                             headers={"Content-Length": str(entry["size"]),
                                      "Content-Disposition": f'attachment; filename="{filename}"'})


def _media_type(name: str) -> str:
    import mimetypes

    return mimetypes.guess_type(name)[0] or "application/octet-stream"


@router.get("/jobs/{job_id}/report", tags=["jobs"], response_model=Report)
def report(job_id: str, request: Request, who: Caller = Depends(caller)):
    with request.app.state.store.session() as s:
        job = visible_job(request, who, job_id, s)
        state = job.state
    raw = request.app.state.artifacts.read_artifact(job_id, "report.json")
    try:
        found = json.loads(raw) if raw is not None else None
    except ValueError:
        found = None
    if found is None:
        raise ApiError(404, f"job {job_id} has no report ({state})")
    return Report.model_validate(found)
