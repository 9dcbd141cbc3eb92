"""The HTTP client of `compress submit` and `compress jobs`: the standard library only (a CI runner needs nothing
of the server's dependencies), every refusal a `UserError` with the server's one-line messages.

    client = Client("http://127.0.0.1:8321", token)
    if not client.has_teacher(sha):
        client.upload_teacher(path, sha)
    job = client.submit(sha, recipe_text, overrides, key)
    for kind, data in client.events(job["id"]):   # server-sent events: state, progress, log, end
        ...
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from compressor.core.errors import UserError
from compressor.core.fileio import atomic_path

TOKEN_ENV = "COMPRESSOR_TOKEN"
SERVER_ENV = "COMPRESSOR_SERVER"
RETRIES = 5  # a call that could not reach the server (connection refused or reset) is tried again this many times


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Client:
    def __init__(self, server: str | None, token: str | None = None, timeout: float = 60.0):
        server = server or os.environ.get(SERVER_ENV)
        if not server:
            raise UserError(f"--server: give the service's URL (or set {SERVER_ENV})")
        if not server.startswith(("http://", "https://")):
            raise UserError(f"--server: {server} is not an http:// or https:// URL")
        self.server = server.rstrip("/")
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        if not self.token:
            raise UserError(f"no token: set {TOKEN_ENV} (the server's operator makes one with "
                            "`compress serve token create NAME`)")
        self.timeout = timeout

    # plumbing ---------------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body=None, headers: dict | None = None, timeout: float | None = None,
                 ok_missing: bool = False):
        url = self.server + path
        head = {"Authorization": f"Bearer {self.token}", "Accept": "application/json", **(headers or {})}
        if isinstance(body, (dict, list)):
            body, head["Content-Type"] = json.dumps(body).encode(), "application/json"
        for attempt in range(RETRIES + 1):
            data = body() if callable(body) else body  # a file is reopened for each try
            req = urllib.request.Request(url, data=data, headers=head, method=method)
            try:
                return urllib.request.urlopen(req, timeout=timeout or self.timeout)
            except urllib.error.HTTPError as e:
                if ok_missing and e.code == 404:
                    return None
                raise UserError(*_problems(e)) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                reason = getattr(e, "reason", e)
                if attempt == RETRIES:
                    raise UserError(f"cannot reach the server {self.server} ({reason})") from None
                time.sleep(min(2 ** attempt, 10))
            finally:
                if hasattr(data, "close"):
                    data.close()

    def _json(self, method: str, path: str, body=None, **kw):
        response = self._request(method, path, body, **kw)
        if response is None:
            return None
        with response:
            raw = response.read()
        return json.loads(raw) if raw else None

    # the API ----------------------------------------------------------------------------------------------------
    def has_teacher(self, sha: str) -> bool:
        return self._json("GET", f"/v1/teachers/{sha}", ok_missing=True) is not None

    def upload_teacher(self, path: Path, sha: str) -> dict:
        size = path.stat().st_size
        query = urllib.parse.urlencode({"filename": path.name})
        return self._json("PUT", f"/v1/teachers/{sha}?{query}", lambda: open(path, "rb"),
                          headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                          timeout=max(self.timeout, 600))

    def submit(self, sha: str, recipe: str, overrides: list[str], key: str | None, resources: dict | None = None,
               timeout_minutes: float | None = None) -> dict:
        body = {"teacher_sha256": sha, "recipe": recipe, "overrides": overrides, "idempotency_key": key}
        if resources:
            body["resources"] = resources
        if timeout_minutes is not None:
            body["timeout_minutes"] = timeout_minutes
        return self._json("POST", "/v1/jobs", body)  # retried with the same key: never two jobs

    def job(self, job_id: str) -> dict:
        return self._json("GET", f"/v1/jobs/{_id(job_id)}")

    def jobs(self, state: str | None = None) -> list[dict]:
        return self._json("GET", "/v1/jobs" + (f"?state={urllib.parse.quote(state)}" if state else ""))

    def cancel(self, job_id: str) -> dict:
        return self._json("POST", f"/v1/jobs/{_id(job_id)}/cancel")

    def delete(self, job_id: str) -> None:
        self._request("DELETE", f"/v1/jobs/{_id(job_id)}").close()

    def log(self, job_id: str, offset: int = 0) -> tuple[str, int]:
        with self._request("GET", f"/v1/jobs/{_id(job_id)}/log?offset={offset}") as r:
            return r.read().decode("utf-8", errors="replace"), int(r.headers.get("X-Log-Offset", offset))

    def artifacts(self, job_id: str) -> list[dict]:
        return self._json("GET", f"/v1/jobs/{_id(job_id)}/artifacts")

    def download(self, job_id: str, name: str, dest: Path) -> None:
        """One artifact into `dest`, written atomically."""
        quoted = urllib.parse.quote(name)
        with self._request("GET", f"/v1/jobs/{_id(job_id)}/artifacts/{quoted}", timeout=600) as r, \
                atomic_path(dest) as tmp, open(tmp, "wb") as f:
            for chunk in iter(lambda: r.read(1 << 20), b""):
                f.write(chunk)

    def events(self, job_id: str, offset: int = 0) -> Iterator[tuple[str, dict]]:
        """The job's server-sent events until it ends; a stream the server closes (or a dropped connection) is
        opened again from the log offset reached."""
        while True:
            response = self._request("GET", f"/v1/jobs/{_id(job_id)}/events?offset={offset}",
                                     headers={"Accept": "text/event-stream"}, timeout=120)
            kind, ended = None, False
            try:
                with response:
                    for raw in response:
                        line = raw.decode("utf-8").rstrip("\n")
                        if line.startswith("event: "):
                            kind = line[7:]
                        elif line.startswith("data: ") and kind:
                            data = json.loads(line[6:])
                            if kind == "log":
                                offset = data["offset"]
                            if kind == "reconnect":
                                break
                            yield kind, data
                            if kind == "end":
                                ended = True
                                break
            except (ConnectionError, TimeoutError, urllib.error.URLError, OSError):
                time.sleep(1)
            if ended:
                return


def describe(progress: dict | None) -> str:
    """One line for a person from a progress event: phase, epoch, step, img/s, ETA."""
    if not progress:
        return "starting"
    p = progress
    if p.get("phase") == "training" and p.get("epoch"):
        parts = [f"training epoch {p['epoch']}/{p.get('epochs')}"]
        if p.get("step") is not None and p.get("steps"):
            parts.append(f"step {p['step']}/{p['steps']}")
        if p.get("images_per_second"):
            parts.append(f"{p['images_per_second']:.0f} img/s")
        if p.get("eta_seconds") is not None:
            parts.append(f"ETA {p['eta_seconds']:.0f} s")
        return ", ".join(parts)
    return f"{p.get('phase')}" + (f": {p['message']}" if p.get("message") else "")


def _id(job_id: str) -> str:
    return urllib.parse.quote(job_id, safe="")


def _problems(e: urllib.error.HTTPError) -> list[str]:
    """The server's one-line messages of a refusal (as `compress distill` would print them for a recipe)."""
    try:
        payload = json.loads(e.read() or b"{}")
        problems = payload.get("problems") or [payload.get("detail") or f"HTTP {e.code} {e.reason}"]
    except (ValueError, AttributeError):
        problems = [f"HTTP {e.code} {e.reason}"]
    return [str(p) for p in problems]
