"""`compress serve`: the job service (HTTP API + web page, a durable job store, jobs on Ray); `compress serve
token create NAME` makes a bearer token."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from compressor.cli.common import Command, Group, handle_errors

app = typer.Typer(cls=Group, help="Run compressor as a job service (HTTP API, web page, jobs on Ray).",
                  invoke_without_command=True)
token_app = typer.Typer(cls=Group, help="Bearer tokens of the service.", no_args_is_help=True)
app.add_typer(token_app, name="token")

HomeOption = Annotated[Optional[Path], typer.Option(
    "--home", help="Where the server keeps its store, teachers and jobs (default $COMPRESSOR_HOME or "
    "~/.compressor/service).")]
DbOption = Annotated[Optional[str], typer.Option(
    "--db", envvar="COMPRESSOR_DB", help="The job store's SQLAlchemy URL, e.g. postgresql+psycopg://user:pass@host/db "
    "for several servers (default: sqlite:///HOME/jobs.db; $COMPRESSOR_DB keeps a password out of the command line).")]


def _missing_extra(e: ImportError):
    from compressor.core.errors import UserError

    return UserError(f"compress serve needs the service's dependencies ({e.name} is missing): "
                     "pip install 'compressor[service]'")


@app.callback()
@handle_errors
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; beyond loopback only once a token "
                                      "exists.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port.")] = 8321,
    dataset: Annotated[Optional[list[str]], typer.Option(
        "--dataset", help="NAME=PATH: a dataset clients may name as data.name (repeatable; fashion_mnist is "
        "built in). NAME cifar10/cifar100/fashion_mnist reads that kind, any other an image folder.")] = None,
    home: HomeOption = None,
    db: DbOption = None,
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", help="Join this Ray cluster instead of starting a local one.")] = None,
    ray_cpus: Annotated[Optional[int], typer.Option("--ray-cpus", min=1, help="CPUs of the local Ray (default: "
                                                    "all).")] = None,
    cpus_per_job: Annotated[int, typer.Option("--cpus-per-job", min=1, help="CPUs a job asks Ray for.")] = 1,
    max_attempts: Annotated[int, typer.Option("--max-attempts", min=1, help="Attempts of a job whose worker "
                                              "dies (each resumes from the last checkpoint).")] = 3,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001, help="Largest teacher upload, "
                                                 "MiB (a token's own limit replaces it).")] = 2048.0,
    artifacts: Annotated[Optional[str], typer.Option(
        "--artifacts", envvar="COMPRESSOR_ARTIFACTS", help="The artifact store (teachers, checkpoints, artifacts): a directory or any fsspec URL, "
        "e.g. s3://bucket/prefix (default: --home). With --ray-address, every node must reach it.")] = None,
    artifacts_endpoint: Annotated[Optional[str], typer.Option(
        "--artifacts-endpoint", help="The endpoint URL of an S3-compatible store (MinIO, Ceph, ...; default "
        "$AWS_ENDPOINT_URL, else AWS). Credentials come from the usual AWS variables or files.")] = None,
    max_queued_per_token: Annotated[int, typer.Option(
        "--max-queued-per-token", min=0, help="Queued jobs a token may have at once; more are refused (429). 0: no "
        "limit. A token's own limit replaces it.")] = 100,
    job_timeout_minutes: Annotated[Optional[float], typer.Option(
        "--job-timeout-minutes", min=0.01, help="Running time a job may take over all its attempts; then it is "
        "stopped (state saved) and failed. Default: no limit.")] = None,
    retention_days: Annotated[float, typer.Option(
        "--retention-days", min=0, help="Finished jobs' files and rows are removed this many days after they "
        "finished, and teachers no job used for as long. 0: keep everything.")] = 30.0,
    lease_seconds: Annotated[float, typer.Option(
        "--lease-seconds", min=1, help="A server (sharing --db) that has not beaten for this long is gone: its "
        "running jobs are re-queued to resume elsewhere.")] = 30.0,
) -> None:
    """Run the job service: an HTTP API under /v1 (OpenAPI at /docs), the web page at /, jobs on Ray.

    Every call but /v1/health needs a bearer token (`compress serve token create NAME`); without any token the
    server listens on loopback only.
    """
    if ctx.invoked_subcommand is not None:
        return
    from compressor.service.config import ServerConfig, default_home, parse_datasets

    cfg = ServerConfig(home=(home or default_home()).resolve(), host=host, port=port, db_url=db,
                       datasets=parse_datasets(dataset), ray_address=ray_address, ray_cpus=ray_cpus,
                       cpus_per_job=cpus_per_job, max_attempts=max_attempts,
                       max_upload_bytes=int(max_upload_mb * 1024 * 1024), artifacts_url=artifacts,
                       artifacts_endpoint=artifacts_endpoint, max_queued_per_token=max_queued_per_token,
                       job_timeout_seconds=int(job_timeout_minutes * 60) if job_timeout_minutes else None,
                       retention_days=retention_days, lease_seconds=lease_seconds,
                       heartbeat_seconds=min(2.0, lease_seconds / 3))
    try:
        from compressor.service.app import serve as run
    except ImportError as e:
        raise _missing_extra(e) from None
    run(cfg)


@token_app.command("create", cls=Command)
@handle_errors
def create(
    name: Annotated[str, typer.Argument(help="Who the token is for (unique), e.g. ci-main.")],
    admin: Annotated[bool, typer.Option("--admin", help="May see and cancel every token's jobs.")] = False,
    max_queued: Annotated[Optional[int], typer.Option("--max-queued", min=0, help="Queued jobs this token may have "
                                                      "at once (0: no limit; default: the server's).")] = None,
    max_upload_mb: Annotated[Optional[float], typer.Option("--max-upload-mb", min=0.001, help="This token's "
                                                           "largest teacher upload, MiB (default: the server's).")] = None,
    home: HomeOption = None,
    db: DbOption = None,
) -> None:
    """Create a bearer token and print it once (only its sha256 is stored)."""
    from compressor.service.config import ServerConfig, default_home

    try:
        from compressor.service.auth import create_token
        from compressor.service.store import Store
    except ImportError as e:
        raise _missing_extra(e) from None
    cfg = ServerConfig(home=(home or default_home()).resolve(), db_url=db)
    cfg.prepare()
    store = Store(cfg.url)
    store.migrate()
    token = create_token(store, name, admin, max_queued=max_queued,
                         max_upload_bytes=int(max_upload_mb * 1024 * 1024) if max_upload_mb else None)
    store.close()
    typer.echo(token)
