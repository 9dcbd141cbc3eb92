"""What the routes share: a refusal (`ApiError`) and its one JSON shape, the caller's token as a dependency, and the
job a caller may see. Below `app`, `routes`, `events` and `web`, so none of them imports another to get these.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from compressor.service import auth
from compressor.service.store import Job


class ApiError(Exception):
    """A refusal: the status and one line per problem."""

    def __init__(self, status: int, *problems: str, headers: dict | None = None):
        self.status, self.problems, self.headers = status, list(problems), headers


def problem(status: int, problems: list[str], headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": "\n".join(problems), "problems": problems}, status_code=status, headers=headers)


def caller(request: Request) -> auth.Caller:
    """The dependency every call but health has: the bearer token's caller, or 401. The web pages' cookie counts
    for GET only (a page never changes anything, and the cookie is SameSite=Strict)."""
    token = auth.bearer(request.headers.get("authorization"))
    if token is None and request.method in ("GET", "HEAD"):
        token = request.cookies.get(auth.COOKIE)
    challenge = {"WWW-Authenticate": "Bearer"}
    if token is None:
        raise ApiError(401, "missing bearer token: send Authorization: Bearer <token> (compress serve token create "
                            "NAME makes one; compress submit reads it from COMPRESSOR_TOKEN)", headers=challenge)
    who = auth.caller_for(request.app.state.store, token)
    if who is None:
        raise ApiError(401, "invalid token: not one this server issued", headers=challenge)
    return who


def visible_job(request: Request, who: auth.Caller, job_id: str, s) -> Job:
    """The job, if the caller may see it; another token's job is as absent as one that never existed (404)."""
    job = s.get(Job, job_id)
    if job is None or not who.may_see(job.token_id):
        raise ApiError(404, f"job {job_id} not found")
    return job
