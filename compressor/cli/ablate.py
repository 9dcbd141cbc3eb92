"""`compress ablate`: student alone vs KD vs AT vs AT+KD vs F-ActT (vs gradient AT), N seeds each, one table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import DeviceOption, RecipeOption, SetOption, handle_errors, overrides


@handle_errors
def ablate(
    teacher: Annotated[Path, typer.Argument(help="Teacher: a compressor checkpoint or a state_dict of teacher.arch.")],
    recipe: RecipeOption,
    seeds: Annotated[int, typer.Option("--seeds", help="Runs per method (seeds recipe.seed, recipe.seed + 1, ...).")] = 3,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Output directory (default runs/<recipe name>-ablation).")
    ] = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    trust_teacher: Annotated[
        bool, typer.Option("--trust-teacher", help="Allow a fully pickled teacher (runs code from the file!).")
    ] = False,
) -> None:
    """Train the student alone, with KD, AT, AT+KD and F-ActT (and gradient AT when the recipe enables it) at an
    equal budget, N seeds each; write [bold]ablation.md[/] and [bold]ablation.json[/] (error mean ± std, params,
    ONNX latency). Finished runs are reused and unfinished ones resumed; gate failures inside runs are recorded.
    """
    from ..ablate import run_ablation
    from ..recipe import load_recipe

    sets = overrides(set_, device)
    r = load_recipe(recipe, sets)
    run_ablation(teacher, recipe, sets, seeds, out or Path("runs") / f"{r.name}-ablation", trust_teacher=trust_teacher)
