"""`compress inspect`: a model's candidate attention points (or every module with a 4-D output)."""

from __future__ import annotations

from compressor.core.errors import UserError, first_line
from compressor.core.progress import console
from compressor.distill.points import all_points, probe_points
from compressor.teachers.load import open_model


def inspect_model(
    model: str, *, input_shape: tuple[int, int, int] | None, num_classes: int = 10, arch: str | None = None, trust: bool = False,
    all_modules: bool = False,
) -> list:
    """`compress inspect`: one dry forward with hooks; prints the candidate attention points (stage outputs) of
    any model `distill` takes as a teacher, or of a registered architecture, or with `all_modules` every
    module with a 4-D output (what explicit pairs may name)."""
    from rich.console import Console
    from rich.table import Table

    shape = input_shape
    teacher = open_model(model, arch=arch, input_shape=shape, num_classes=num_classes, trust=trust)
    if shape is None:  # the file's own input shape, else 32x32 with the channels its first convolution takes
        shape = teacher.native_shape or ((teacher.input_shape or (None,))[0] or 3, 32, 32)
    try:
        points = (all_points if all_modules else probe_points)(teacher.model, shape)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{model}: cannot run on {shape[0]}x{shape[1]}x{shape[2]} inputs ({first_line(e)}); "
                        "give --input-shape C,H,W") from None
    what = "modules with a 4-D output" if all_modules else "attention points (stage outputs)"
    out = Console(highlight=False)
    out.print(f"{what} of {teacher.arch} ({teacher.source}), input {shape[0]}x{shape[1]}x{shape[2]}:", soft_wrap=True)
    table = Table()
    for h in ("module", "output shape (C, H, W)", "stride"):
        table.add_column(h)
    for p in points:
        table.add_row(p.module, str(tuple(p.shape)), str(p.stride))
    out.print(table)
    if not points:
        console.print(f"{model}: no module of this model outputs a spatial feature map at this input size")
    return points
