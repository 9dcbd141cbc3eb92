"""`compress export`: a checkpoint (or another model file a teacher may be) to ONNX, with the parity check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import handle_errors


@handle_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help=(
        "A compressor checkpoint (teacher.pt, student.pt); also a state_dict with --arch, a TorchScript archive, "
        "a torch.export .pt2, a pickled module with --trust-teacher."
    ))],
    out: Annotated[Path, typer.Option("--out", "-o", help="ONNX file to write.")],
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 18,
    max_abs_diff: Annotated[float, typer.Option("--max-abs-diff", help="Parity tolerance (exit 1 above it).")] = 1e-4,
    input_shape: Annotated[
        Optional[str], typer.Option("--input-shape", help="C,H,W, for files that do not record it (TorchScript, state_dict).")
    ] = None,
    arch: Annotated[Optional[str], typer.Option("--arch", help="Architecture of a state_dict file.")] = None,
    trust_teacher: Annotated[
        bool, typer.Option("--trust-teacher", help="Allow a fully pickled model (runs code from the file!).")
    ] = False,
) -> None:
    """Export a model to one self-contained ONNX file and prove PyTorch/onnxruntime parity."""
    from ..pipeline import export_checkpoint

    export_checkpoint(checkpoint, out, opset=opset, max_abs_diff=max_abs_diff, input_shape=input_shape, arch=arch,
                      trust=trust_teacher)
