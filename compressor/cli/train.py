"""`compress train`: train the recipe's teacher from scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from compressor.cli.common import DeviceOption, RecipeOption, SetOption, overrides


def train(
    recipe: RecipeOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write, e.g. runs/teacher.pt")],
    set_: SetOption = None,
    device: DeviceOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted training of the same --out.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --out.")] = False,
) -> None:
    """Train the recipe's [bold]teacher[/] from scratch; writes a self-describing checkpoint."""
    from compressor.jobs.teacher import train_teacher
    from compressor.recipe.load import load_recipe

    r = load_recipe(recipe, overrides(set_, device))
    train_teacher(r, out, resume=resume, force=force)
