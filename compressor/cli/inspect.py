"""`compress inspect`: a model's candidate attention points."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from compressor.cli.common import Shape, shape_option



def inspect(
    model: Annotated[str, typer.Argument(help=(
        "A model file (compressor checkpoint, state_dict with --arch, TorchScript archive, torch.export .pt2, "
        "pickled module with --trust-teacher) or a registered architecture name (wrn-16-2, resnet18, timm:NAME)."
    ))],
    input_shape: Annotated[
        Optional[Shape], typer.Option("--input-shape", parser=shape_option, metavar="C,H,W", help="C,H,W of the dry forward (default: the file's own, else C,32,32).")
    ] = None,
    num_classes: Annotated[int, typer.Option("--num-classes", help="Classes, for an architecture name.")] = 10,
    arch: Annotated[Optional[str], typer.Option("--arch", help="Architecture of a state_dict file.")] = None,
    all_modules: Annotated[
        bool, typer.Option("--all", help="List every module with a 4-D output (what explicit pairs may name).")
    ] = False,
    trust_teacher: Annotated[
        bool, typer.Option("--trust-teacher", help="Allow a fully pickled model (runs code from the file!).")
    ] = False,
) -> None:
    """List candidate attention points (stage outputs): module path, output shape, stride."""
    from compressor.jobs.inspect import inspect_model

    inspect_model(model, input_shape=input_shape, num_classes=num_classes, arch=arch, trust=trust_teacher,
                  all_modules=all_modules)
