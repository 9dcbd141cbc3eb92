"""`compress report schema [distill|verify|ablation]`: the JSON Schema of what a job writes (report.json, the
verify JSON, ablation.json), generated from the models the jobs build their reports with."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import typer

from compressor.cli.common import Command, Group

app = typer.Typer(cls=Group, help="The reports' JSON Schemas.", no_args_is_help=True)


@app.command("schema", cls=Command)
def schema(
    kind: Annotated[Literal["distill", "verify", "ablation"], typer.Argument(
        help="distill: report.json; verify: compress verify's JSON; ablation: ablation.json")] = "distill",
) -> None:
    """Print the JSON Schema of a report (what CI reads; the job service publishes the same in its OpenAPI)."""
    from compressor.report.models import SCHEMAS

    typer.echo(json.dumps(SCHEMAS[kind].model_json_schema(), indent=2))
