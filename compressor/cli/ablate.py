"""`compress ablate`: student alone vs KD vs AT vs AT+KD vs F-ActT (vs gradient AT), N seeds each, one table."""

from __future__ import annotations

from pathlib import Path
from enum import Enum
from typing import Annotated, Optional

import typer

from compressor.cli.common import DeviceOption, RecipeOption, SetOption, overrides


class Init(str, Enum):
    """Where the students of an --init axis come from (students.build)."""

    scratch = "scratch"
    teacher = "teacher"


def ablate(
    teacher: Annotated[Path, typer.Argument(help="Teacher: a compressor checkpoint or a state_dict of teacher.arch.")],
    recipe: RecipeOption,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Runs per method (seeds recipe.seed, recipe.seed + 1, ...).")] = 3,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Output directory (default runs/<recipe name>-ablation).")
    ] = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    trust_teacher: Annotated[
        bool, typer.Option("--trust-teacher", help="Allow a fully pickled teacher (runs code from the file!).")
    ] = False,
    methods: Annotated[
        Optional[str], typer.Option("--methods", help="Only these methods, comma-separated (student, kd, at, at+kd, "
                                    "f-actt, grad-at). Default: all.")
    ] = None,
    init: Annotated[
        Optional[list[Init]], typer.Option(
            "--init", help="Student-init axis: scratch and/or teacher (repeat the option); each method runs once per "
            "init. Default: the recipe's init.")
    ] = None,
    init_set: Annotated[
        Optional[list[str]], typer.Option("--init-set", help="An override for one init only, INIT:key=value "
                                          "(e.g. scratch:train.lr=0.1); repeatable.")
    ] = None,
) -> None:
    """Train the student alone, with KD, AT, AT+KD and F-ActT (and gradient AT when the recipe enables it) at an
    equal budget, N seeds each; write [bold]ablation.md[/] and [bold]ablation.json[/] (error mean ± std, params,
    ONNX latency). Finished runs are reused and unfinished ones resumed; gate failures inside runs are recorded.
    """
    from compressor.jobs.ablate import run_ablation
    from compressor.recipe.load import load_recipe

    sets = overrides(set_, device)
    r = load_recipe(recipe, sets)
    run_ablation(teacher, recipe, sets, seeds, out or Path("runs") / f"{r.name}-ablation", trust_teacher=trust_teacher,
                 inits=list(dict.fromkeys(i.value for i in init)) if init else None, init_sets=init_set or [],
                 only=[m for m in (methods or "").split(",") if m] or None)
