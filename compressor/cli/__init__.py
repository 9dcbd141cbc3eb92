"""cli/: `compress`, a thin Typer CLI over the library. Each subcommand lives in its own module, parses its
options, and hands a validated recipe to a plain function in `compressor.jobs`. May import everything."""

from __future__ import annotations

from typing import Annotated

import typer

from compressor.cli import ablate, distill, export, inspect, jobs, recipe, report, serve, submit, train, verify
from compressor.cli.common import Command, Group, version_callback

app = typer.Typer(
    cls=Group,
    name="compress",
    help="Distil a small, fast CNN from a large one (attention transfer + KD), export it to ONNX, "
    "and prove its accuracy and latency with onnxruntime.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("train", cls=Command)(train.train)
app.command("distill", cls=Command)(distill.distill)
app.command("export", cls=Command)(export.export)
app.command("verify", cls=Command)(verify.verify)
app.command("inspect", cls=Command)(inspect.inspect)
app.command("ablate", cls=Command)(ablate.ablate)
app.add_typer(recipe.app, name="recipe")
app.add_typer(report.app, name="report")
app.add_typer(serve.app, name="serve")
app.command("submit", cls=Command)(submit.submit)
app.add_typer(jobs.app, name="jobs")


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=version_callback,
                                          help="Print the version and exit.")] = False,
) -> None:
    # no docstring: Typer would show it instead of the app's help; --version acts in its callback, before commands
    pass


def main() -> None:
    import os

    from compressor.core.memory import fewer_collections

    fewer_collections()  # this process is ours: fewer passes of the cyclic collector over torch's modules
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 speaks (results and errors)
        from compressor.core.progress import console

        console.quiet = True
    app()
