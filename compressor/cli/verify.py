"""`compress verify`: accuracy and latency of an ONNX classifier, optionally against a baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from compressor.cli.common import DeviceOption, RecipeOption, SetOption, overrides


def verify(
    model: Annotated[Path, typer.Argument(help="ONNX classifier to verify.")],
    recipe: RecipeOption,
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="ONNX model to compare against (e.g. the teacher).")] = None,
    reference: Annotated[Optional[Path], typer.Option("--reference", help=(
        "The checkpoint MODEL was exported from: its logits must match MODEL's on real test images (the "
        "max_abs_diff gate, as in distill)."))] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="JSON file to write (default: MODEL.verify.json).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --out.")] = False,
    set_: SetOption = None,
    device: DeviceOption = None,
) -> None:
    """Accuracy on the recipe's test data and latency per batch size of any ONNX image classifier, with the
    recipe's gates; a model with a fixed batch is scored and timed at the batch size it accepts.

    Exit 0: all gates passed; 1: a gate failed (the JSON is still written); 2: bad input or a model it cannot use.
    """
    from compressor.jobs.verify import verify_model
    from compressor.recipe.load import load_recipe

    r = load_recipe(recipe, overrides(set_, device))
    verify_model(model, r, baseline=baseline, reference=reference, out=out or model.with_suffix(".verify.json"),
                 force=force)
