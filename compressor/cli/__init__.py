"""`compress`: a thin Typer CLI over the library. Each subcommand lives in its own module, parses its
options, and hands a validated recipe to a plain function in `compressor.pipeline`."""

from __future__ import annotations

import typer

from . import ablate, distill, export, inspect, recipe, train, verify

app = typer.Typer(
    name="compress",
    help="Distil a small, fast CNN from a large one (attention transfer + KD), export it to ONNX, "
    "and prove its accuracy and latency with onnxruntime.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("train")(train.train)
app.command("distill")(distill.distill)
app.command("export")(export.export)
app.command("verify")(verify.verify)
app.command("inspect")(inspect.inspect)
app.command("ablate")(ablate.ablate)
app.add_typer(recipe.app, name="recipe")


def main() -> None:
    import os

    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 speaks (results and errors)
        from ..progress import console

        console.quiet = True
    app()
