"""`compress export`: any compressor checkpoint to ONNX, with the parity check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import handle_errors


@handle_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A compressor checkpoint (teacher.pt, student.pt).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="ONNX file to write.")],
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 18,
    max_abs_diff: Annotated[float, typer.Option("--max-abs-diff", help="Parity tolerance (exit 1 above it).")] = 1e-4,
) -> None:
    """Export a checkpoint to one self-contained ONNX file and prove PyTorch/onnxruntime parity."""
    from ..pipeline import export_checkpoint

    export_checkpoint(checkpoint, out, opset=opset, max_abs_diff=max_abs_diff)
