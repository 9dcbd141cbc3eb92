"""`compress export`: a checkpoint (or another model file a teacher may be) to ONNX, with the parity check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from compressor.cli.common import Shape, shape_option



def export(
    checkpoint: Annotated[Path, typer.Argument(help=(
        "A compressor checkpoint (teacher.pt, student.pt); also a state_dict with --arch, a TorchScript archive, "
        "a torch.export .pt2, a pickled module with --trust-teacher."
    ))],
    out: Annotated[Path, typer.Option("--out", "-o", help="ONNX file to write.")],
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 18,
    max_abs_diff: Annotated[float, typer.Option("--max-abs-diff", help="Parity tolerance's absolute part: exit 1 above "
                                                "max-abs-diff + parity-rtol x the largest |logit|.")] = 1e-4,
    parity_rtol: Annotated[float, typer.Option("--parity-rtol", help="Parity tolerance's part relative to the "
                                               "logits' scale.")] = 1e-5,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --out.")] = False,
    input_shape: Annotated[
        Optional[Shape], typer.Option("--input-shape", parser=shape_option, metavar="C,H,W", help="C,H,W, for files that do not record it (TorchScript, state_dict).")
    ] = None,
    arch: Annotated[Optional[str], typer.Option("--arch", help="Architecture of a state_dict file.")] = None,
    trust_teacher: Annotated[
        bool, typer.Option("--trust-teacher", help="Allow a fully pickled model (runs code from the file!).")
    ] = False,
) -> None:
    """Export a model to one self-contained ONNX file and prove PyTorch/onnxruntime parity."""
    from compressor.core.errors import UserError
    from compressor.jobs.export import export_checkpoint

    if max_abs_diff <= 0 or parity_rtol < 0:
        raise UserError("--max-abs-diff must be > 0 and --parity-rtol >= 0")
    export_checkpoint(checkpoint, out, opset=opset, max_abs_diff=max_abs_diff, rtol=parity_rtol, input_shape=input_shape,
                      arch=arch, trust=trust_teacher, force=force)
