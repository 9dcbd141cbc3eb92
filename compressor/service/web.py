"""The web page: server-rendered HTML (jinja2 templates in templates/), JavaScript only for the live view.

    GET  /            the jobs: state and reason, teacher, student size, accuracy drop, speed-up, gates, who, when
    GET  /jobs/{id}   a job: live progress and log (EventSource on /v1/jobs/{id}/events), report.md rendered with
                      its figures, downloads
    GET  /login       a form for the token; POST /login keeps it in an HttpOnly, SameSite=Strict cookie
    GET  /logout

Pages only read; changing anything (cancel, delete) is the API's, with the token in a header. report.md is
rendered without raw HTML (a teacher's class names end up in it), and its figure links point at the artifacts.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from compressor.service import auth
from compressor.service.deps import ApiError, caller, visible_job
from compressor.service.client import describe
from compressor.service.schemas import ArtifactOut, JobOut

router = APIRouter(include_in_schema=False)
TEMPLATES = Path(__file__).resolve().parent / "templates"


@lru_cache(maxsize=1)
def environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)


def page(name: str, status: int = 200, **context) -> HTMLResponse:
    return HTMLResponse(environment().get_template(name).render(**context), status_code=status)


def _who(request: Request):
    try:
        return caller(request)
    except ApiError:
        return None


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request):
    who = _who(request)
    if who is None:
        return RedirectResponse("/login", status_code=303)
    store = request.app.state.store
    with store.session() as s:
        jobs = [JobOut.of(j) for j in store.jobs(s, token_id=None if who.admin else who.id, limit=500)]
    return page("jobs.html", who=who, jobs=jobs, server=str(request.base_url).rstrip("/"))


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str, request: Request):
    who = _who(request)
    if who is None:
        return RedirectResponse("/login", status_code=303)
    with request.app.state.store.session() as s:
        try:
            job = JobOut.of(visible_job(request, who, job_id, s))
        except ApiError as e:
            return page("login.html", status=404, who=who, error=e.problems[0])
    artifacts = request.app.state.artifacts
    log_text, log_offset = artifacts.read_log(job_id)
    report_md = artifacts.read_artifact(job_id, "report.md")
    report_html = render_report(report_md.decode("utf-8", errors="replace"), job_id) if report_md else None
    return page("job.html", who=who, job=job, artifacts=ArtifactOut.listing(artifacts, job_id),
                report_html=report_html, log_text=log_text, log_offset=log_offset,
                progress_line=describe(job.progress) if job.progress else "")


def render_report(text: str, job_id: str) -> str:
    """report.md as HTML: tables, figures from the job's artifacts; raw HTML in it is shown, never run."""
    import markdown

    md = markdown.Markdown(extensions=["tables", "fenced_code"])
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    html = md.convert(text)

    def artifact_url(m: re.Match) -> str:
        src = m.group(2)
        if re.match(r"^[a-z]+:", src) or src.startswith("/"):
            return m.group(0) if src.startswith(("http://", "https://", "/v1/")) else f'{m.group(1)}""'
        return f'{m.group(1)}"/v1/jobs/{job_id}/artifacts/{src}"'

    html = re.sub(r'(<img[^>]*?src=)"([^"]*)"', artifact_url, html)
    return re.sub(r'href="(?:javascript|data|vbscript):[^"]*"', 'href="#"', html, flags=re.I)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request):
    return page("login.html", who=None)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request):
    body = (await request.body())[:4096].decode("utf-8", errors="replace")
    token = (parse_qs(body).get("token") or [""])[0].strip()
    if auth.caller_for(request.app.state.store, token) is None:
        return page("login.html", status=401, who=None, error="That token is not one this server issued.")
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(auth.COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@router.get("/logout")
def logout():
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(auth.COOKIE)
    return response
