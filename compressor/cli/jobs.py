"""`compress jobs list|show|logs|wait|cancel|download`: a service's jobs from a terminal or CI (the server from
--server or $COMPRESSOR_SERVER, the token from $COMPRESSOR_TOKEN). `follow` is also `compress submit`'s second
half: the job's log and progress as it runs, its artifacts downloaded, and the exit code `compress distill` would
have given."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from compressor.cli.common import Command, Group, handle_errors

app = typer.Typer(cls=Group, help="A job service's jobs: list, show, logs, wait, cancel, download.",
                  no_args_is_help=True)

ServerOption = Annotated[Optional[str], typer.Option("--server", help="The service's URL (default "
                                                     "$COMPRESSOR_SERVER).")]
JobArgument = Annotated[str, typer.Argument(help="The job's id (compress jobs list shows them).")]
PROGRESS_EVERY = 5.0  # seconds between progress lines while an epoch runs (the log has one line per epoch)


def _client(server: str | None):
    from compressor.service.client import Client

    return Client(server)


def _console():
    from compressor.core.progress import console

    return console


def follow(client, job: dict, out: Path | None, *, download: bool = True, force: bool = False) -> None:
    """Stream the job's log and progress until it ends, download its artifacts into `out`, and exit as
    `compress distill` would (0, 1 gate failed, 2 rejected, 130 cancelled; a crash after its retries: 1)."""
    console, job_id = _console(), job["id"]
    last_reason, last_progress = None, 0.0
    try:
        for kind, data in client.events(job_id):
            if kind == "state" and data["reason"] != last_reason:
                last_reason = data["reason"]
                if data["state"] in ("queued", "running") and not data["reason"].startswith("running: attempt"):
                    console.print(f"job {job_id} {data['state']}: {data['reason']}", highlight=False)
            elif kind == "log":
                sys.stderr.write(data["text"])
                sys.stderr.flush()
            elif kind == "progress" and data.get("phase") == "training" and data.get("metrics") is None:
                if time.monotonic() - last_progress >= PROGRESS_EVERY:
                    from compressor.service.client import describe

                    last_progress = time.monotonic()
                    console.print(f"job {job_id}: {describe(data)}", highlight=False)
            elif kind == "end":
                break
    except KeyboardInterrupt:
        console.print(f"stopped following; job {job_id} goes on on the server. Re-attach with: compress jobs wait "
                      f"{job_id} --server {client.server}" + (f" --out {out}" if out else ""), highlight=False)
        raise typer.Exit(130) from None
    final = client.job(job_id)
    if download and out is not None and final["state"] in ("succeeded", "gate_failed"):
        fetch(client, job_id, out, force=force)
    finish(final)


def fetch(client, job_id: str, out: Path, *, force: bool = False) -> list[str]:
    """Every artifact of the job into `out` (figures/ included), each written atomically."""
    from compressor.core.errors import UserError

    if (out / "report.json").exists() and not force:
        raise UserError(f"--out: {out} holds a finished run (report.json); pass --force to overwrite it")
    names = [a["name"] for a in client.artifacts(job_id)]
    for name in names:
        client.download(job_id, name, out / Path(*name.split("/")))
    _console().print(f"downloaded {len(names)} artifacts of job {job_id} into {out}/", highlight=False)
    return names


def finish(job: dict) -> None:
    """Print how the job ended, as `compress distill` prints it, and exit with its code."""
    from compressor.core.errors import EXIT_OK

    console, state = _console(), job["state"]
    label = "failed" if state == "gate_failed" else "error"
    if state == "succeeded":
        console.print(f"job {job['id']} succeeded: {job['reason']}", highlight=False)
    else:
        for line in job["problems"] or [job["reason"]]:
            console.print(f"[bold red]{label}:[/] {line}", highlight=False, soft_wrap=True)
        console.print(f"job {job['id']} {state}: {job['reason']}", highlight=False, soft_wrap=True)
    code = job.get("exit_code")
    raise typer.Exit(EXIT_OK if code is None and state == "succeeded" else (code if code is not None else 1))


@app.command("list", cls=Command)
@handle_errors
def list_(server: ServerOption = None,
          state: Annotated[Optional[str], typer.Option("--state", help="Only jobs in this state.")] = None,
          as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The jobs this token may see, newest first."""
    jobs = _client(server).jobs(state)
    if as_json:
        typer.echo(json.dumps(jobs, indent=2))
        return
    for j in jobs:
        typer.echo(f"{j['id']}  {j['state']:<11} {j['created_at'][:19]}  {j['owner']:<12} {j['recipe_name']:<16} "
                   f"{j['teacher_name']}  {j['reason']}")


@app.command("show", cls=Command)
@handle_errors
def show(job_id: JobArgument, server: ServerOption = None) -> None:
    """The job as JSON: state, reason, attempts, progress, summary."""
    typer.echo(json.dumps(_client(server).job(job_id), indent=2))


@app.command("logs", cls=Command)
@handle_errors
def logs(job_id: JobArgument, server: ServerOption = None,
         follow_: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False
         ) -> None:
    """The job's log (what `compress distill` printed on the worker)."""
    client = _client(server)
    if not follow_:
        text, _ = client.log(job_id)
        sys.stdout.write(text)
        return
    for kind, data in client.events(job_id):
        if kind == "log":
            sys.stdout.write(data["text"])
            sys.stdout.flush()


@app.command("wait", cls=Command)
@handle_errors
def wait(job_id: JobArgument, server: ServerOption = None,
         out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Download the artifacts here once it "
                                                     "ends.")] = None,
         force: Annotated[bool, typer.Option("--force", help="Overwrite a finished run in --out.")] = False) -> None:
    """Follow a job to its end (re-attach after `compress submit` was interrupted); exit as `compress distill`."""
    client = _client(server)
    follow(client, client.job(job_id), out, force=force)


@app.command("cancel", cls=Command)
@handle_errors
def cancel(job_id: JobArgument, server: ServerOption = None) -> None:
    """Cancel a job: a queued one at once; a running one saves its training state and stops."""
    job = _client(server).cancel(job_id)
    typer.echo(f"{job['id']} {job['state']}: {job['reason']}")


@app.command("download", cls=Command)
@handle_errors
def download(job_id: JobArgument, server: ServerOption = None,
             out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder (default runs/<job id>).")] = None,
             force: Annotated[bool, typer.Option("--force", help="Overwrite a finished run in --out.")] = False
             ) -> None:
    """Download the job's artifacts (student.onnx, report.json, report.md, figures, ...)."""
    fetch(_client(server), job_id, out or Path("runs") / job_id, force=force)
