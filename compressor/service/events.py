"""A job while it runs: its progress as JSON, its log, and both as a live stream of server-sent events.

    GET /v1/jobs/{id}/progress              state, reason, attempts, the last ProgressEvent and metrics row
    GET /v1/jobs/{id}/log?offset=N          the log from byte N (text); X-Log-Offset: where the next read starts
    GET /v1/jobs/{id}/events?offset=N       text/event-stream: `state` (the job, when its state or reason changes),
                                            `progress` (each new ProgressEvent), `log` ({"text", "offset"}), and
                                            `end` once the job finished and its log is sent. A stream lasts at most
                                            STREAM_SECONDS, then ends with `reconnect` ({"offset"}): a client opens
                                            it again from there (the browser's EventSource does so by itself).
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, StreamingResponse

from compressor.service.deps import ApiError, caller, visible_job
from compressor.service.auth import Caller
from compressor.service.schemas import JobOut

router = APIRouter(prefix="/v1")
STREAM_SECONDS = 600.0  # one stream's longest life (bounded loops; proxies dislike endless responses)
STREAM_POLL = 0.5


def snapshot(request: Request, who: Caller, job_id: str) -> JobOut:
    with request.app.state.store.session() as s:
        return JobOut.of(visible_job(request, who, job_id, s))


@router.get("/jobs/{job_id}/progress", tags=["jobs"])
def progress(job_id: str, request: Request, who: Caller = Depends(caller)) -> dict:
    job = snapshot(request, who, job_id)
    return {"id": job.id, "state": job.state, "reason": job.reason, "attempts": job.attempts,
            "max_attempts": job.max_attempts, "progress": job.progress, "last_metrics": job.last_metrics}


@router.get("/jobs/{job_id}/log", tags=["jobs"], response_class=PlainTextResponse)
def log(job_id: str, request: Request, offset: int = 0, who: Caller = Depends(caller)):
    snapshot(request, who, job_id)
    if offset < 0:
        raise ApiError(400, "offset: a byte position, 0 or more")
    text, nxt = request.app.state.artifacts.read_log(job_id, offset)
    return PlainTextResponse(text, headers={"X-Log-Offset": str(nxt)})


def sse(kind: str, data) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, default=str)}\n\n".encode()


@router.get("/jobs/{job_id}/events", tags=["jobs"])
async def events(job_id: str, request: Request, offset: int = 0, who: Caller = Depends(caller)):
    snapshot(request, who, job_id)  # 404 before the stream starts
    artifacts = request.app.state.artifacts

    async def stream():
        seen_state, seen_seq, at = None, None, max(offset, 0)
        deadline = time.monotonic() + STREAM_SECONDS
        while True:
            try:  # the store and the artifact store off the event loop: other requests go on meanwhile
                job = await run_in_threadpool(snapshot, request, who, job_id)
            except ApiError:  # deleted while we streamed
                yield sse("end", {"state": "deleted", "exit_code": None, "offset": at})
                return
            if (job.state, job.reason, job.attempts) != seen_state:
                seen_state = (job.state, job.reason, job.attempts)
                yield sse("state", job.model_dump(mode="json"))
            seq = (job.attempts, job.progress and json.dumps(job.progress, sort_keys=True, default=str))
            if job.progress and seq != seen_seq:
                seen_seq = seq
                yield sse("progress", job.progress)
            while True:
                text, at_next = await run_in_threadpool(artifacts.read_log, job_id, at)
                if not text:
                    break
                at = at_next
                yield sse("log", {"text": text, "offset": at})
            if job.finished:
                yield sse("end", {"state": job.state, "exit_code": job.exit_code, "offset": at})
                return
            if time.monotonic() > deadline or await request.is_disconnected():
                yield sse("reconnect", {"offset": at})
                return
            await asyncio.sleep(STREAM_POLL)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
