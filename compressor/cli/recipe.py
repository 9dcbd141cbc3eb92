"""`compress recipe validate|schema`: check recipes without running anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from compressor.cli.common import Command, Group, SetOption

app = typer.Typer(cls=Group, help="Check recipes, print the recipe JSON Schema.", no_args_is_help=True)


@app.command("validate", cls=Command)
def validate(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe files.")],
    set_: SetOption = None,
) -> None:
    """Validate recipes; every problem of every file is listed (exit 2 if any)."""
    from compressor.core.errors import UserError
    from compressor.core.progress import console
    from compressor.recipe.load import load_recipe

    problems = []
    for path in recipes:
        try:
            r = load_recipe(path, set_ or [])
            console.print(f"{path}: ok ({r.name}: {r.teacher.arch} -> {r.student.arch or f'size {r.student.size}'})")
        except UserError as e:
            problems += [p if p.startswith(str(path)) else f"{path}: {p}" for p in e.problems]
    if problems:
        raise UserError(*problems)


@app.command("schema", cls=Command)
def schema() -> None:
    """Print the recipe JSON Schema (for editor completion)."""
    from compressor.recipe.load import recipe_schema

    typer.echo(json.dumps(recipe_schema(), indent=2))
