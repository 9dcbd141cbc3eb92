"""`compress verify`: accuracy and latency of an ONNX classifier, optionally against a baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import DeviceOption, RecipeOption, SetOption, handle_errors, overrides


@handle_errors
def verify(
    model: Annotated[Path, typer.Argument(help="ONNX classifier to verify.")],
    recipe: RecipeOption,
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="ONNX model to compare against (e.g. the teacher).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="JSON file to write (default: MODEL.verify.json).")] = None,
    set_: SetOption = None,
    device: DeviceOption = None,
) -> None:
    """Accuracy on the recipe's test data and latency per batch size, with the recipe's gates."""
    from ..pipeline import verify_model
    from ..recipe import load_recipe

    r = load_recipe(recipe, overrides(set_, device))
    verify_model(model, r, baseline=baseline, out=out or model.with_suffix(".verify.json"))
