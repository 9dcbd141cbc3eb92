"""`compress inspect`: a model's candidate attention points."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .common import handle_errors


@handle_errors
def inspect(
    model: Annotated[str, typer.Argument(help="A checkpoint file, or a registered architecture name (wrn-16-2, resnet18).")],
    input_shape: Annotated[
        Optional[str], typer.Option("--input-shape", help="C,H,W for an architecture name (default 3,32,32).")
    ] = None,
    num_classes: Annotated[int, typer.Option("--num-classes", help="Classes, for an architecture name.")] = 10,
) -> None:
    """List candidate attention points: module path, output shape, stride."""
    from ..pipeline import inspect_model

    inspect_model(model, input_shape=input_shape, num_classes=num_classes)
