"""`compress submit`: a teacher and a recipe to a job service, and the verified student back — the CI step."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Optional

import typer

from compressor.cli.common import RecipeOption, SetOption, handle_errors
from compressor.cli.jobs import ServerOption, follow


@handle_errors
def submit(
    teacher: Annotated[Path, typer.Argument(help="Teacher: a compressor checkpoint or a state_dict (the service "
                                            "loads weights only).")],
    recipe: RecipeOption,
    server: ServerOption = None,
    set_: SetOption = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where the artifacts go (default "
                                                "runs/<recipe name>).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite a finished run in --out.")] = False,
    key: Annotated[Optional[str], typer.Option("--idempotency-key", help="Submitting the same key again "
                                               "re-attaches to its job instead of starting another (default: a "
                                               "new key per call).")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Print the job's id and exit 0 once it is queued.")] = False,
    cpus: Annotated[Optional[int], typer.Option("--cpus", min=1, help="CPUs the job needs (default: the server's "
                                                "--cpus-per-job).")] = None,
    memory_gb: Annotated[Optional[float], typer.Option("--memory-gb", min=0.001, help="Memory the cluster reserves "
                                                       "for the job, GiB.")] = None,
    worker: Annotated[Optional[str], typer.Option("--worker", help="A worker kind: run only on nodes that offer "
                                                  "this Ray custom resource (e.g. a100).")] = None,
    timeout_minutes: Annotated[Optional[float], typer.Option("--timeout-minutes", min=0.01, help="Stop the job "
                                                             "(state saved, failed) past this running time.")] = None,
) -> None:
    """Upload TEACHER (skipped when the server has it), submit the recipe, follow the job, download its artifacts,
    and exit as `compress distill` would: 0 passed, 1 a gate failed, 2 bad input, 130 cancelled.

    The token comes from $COMPRESSOR_TOKEN. Interrupted, the job goes on; `compress jobs wait ID` re-attaches.
    """
    from compressor.core.errors import UserError
    from compressor.core.progress import console
    from compressor.recipe.load import read_yaml
    from compressor.service.client import Client, sha256_of

    client = Client(server)
    if not teacher.is_file():
        raise UserError(f"{teacher}: file not found" if not teacher.exists() else f"{teacher}: not a file")
    text = recipe.read_text(encoding="utf-8") if recipe.is_file() else None
    raw = read_yaml(recipe)  # a missing file or broken YAML: the same message as compress distill, before uploading
    name = raw.get("name", "run") if isinstance(raw, dict) else "run"
    out = out or Path("runs") / str(name)
    if (out / "report.json").exists() and not force and not detach:
        raise UserError(f"--out: {out} holds a finished run (report.json); pass --force to overwrite it")
    sha = sha256_of(teacher)
    if client.has_teacher(sha):
        console.print(f"the server has {teacher.name} (sha256 {sha[:12]}…): not uploading it again", highlight=False)
    else:
        size = teacher.stat().st_size
        console.print(f"uploading {teacher.name} ({size / 1e6:.1f} MB, sha256 {sha[:12]}…)", highlight=False)
        client.upload_teacher(teacher, sha)
    resources = {k: v for k, v in (("cpus", cpus), ("memory_gb", memory_gb), ("worker", worker)) if v is not None}
    job = client.submit(sha, text, list(set_ or []), key or f"submit-{uuid.uuid4()}", resources, timeout_minutes)
    console.print(f"job {job['id']} {job['state']}: {client.server}/jobs/{job['id']}", highlight=False)
    if detach:
        typer.echo(job["id"])
        return
    follow(client, job, out, force=force)
