"""What several jobs share: the test batches, the gates' verdict, an output file's checks, a C,H,W option, and
BatchNorm statistics recomputed after a short training."""

from __future__ import annotations

import json
from pathlib import Path

from compressor.core.device import memory_format
from compressor.core.progress import console
from compressor.core.errors import GateFailure, UserError
from compressor.data.batches import Batches, make_batches
from compressor.data.splits import DataBundle
from compressor.models.batchnorm import recalibrate_bn
from compressor.recipe.schema import Recipe
from compressor.students.build import calibration_batches, calibration_sample
from compressor.verify.results import Gate


def batches_for(split, data: DataBundle, device, recipe: Recipe, batch_size: int = 512) -> Batches:
    """The test split in the training's memory format (channels_last: 10,000 test images through the
    WRN-16-2 teacher took 23 s instead of 36 s here)."""
    fmt = memory_format(recipe.train.channels_last)
    return make_batches(split.to(device), batch_size, data.normalize(device, fmt),
                        workers=recipe.data.workers, device=device)


def recompute_batchnorm(model, recipe: Recipe, data: DataBundle, device, why: str) -> int:
    """Every BatchNorm's statistics of `model` anew on the recipe's calibration sample of training images (a
    training too short for the layers' momentum: models.batchnorm); prints one line ending in `why`. Returns the
    images seen."""
    batch, _ = calibration_batches(model, data)
    n, calib = calibration_sample(recipe, data, batch)
    recalibrate_bn(model, calib(), device=device)
    console.print(f"BatchNorm statistics recomputed on {n} training images: {why}")
    return n


def run_inputs(teacher: Path | None, recipe: Recipe) -> dict[str, Path]:
    """The files a run reads, which it must never replace: the teacher and the recipe file."""
    inputs = {"teacher": teacher} if teacher is not None else {}
    if recipe.source is not None:
        inputs["recipe"] = Path(recipe.source)
    return inputs


def raise_failed(gates: list[Gate]) -> None:
    """After every artifact is written: exit 1 naming each failed gate."""
    failed = [g for g in gates if not g.passed]
    if failed:
        raise GateFailure(*(f"gate {g.name} failed: value {_fmt(g.value)}, limit {_fmt(g.limit)}"
                            + (f" ({g.detail})" if g.detail else "") for g in failed))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else json.dumps(v)


def check_output(out: Path, inputs: list[Path | None], force: bool) -> None:
    """A command's output file: never one of its inputs (that would destroy what it reads), and an existing
    regular file only with --force."""
    for given in inputs:
        if given is not None and given.exists() and out.exists() and out.resolve() == given.resolve():
            raise UserError(f"--out: {out} is the input {given}; writing it would replace the file being read "
                            "(give another --out)")
    if out.is_dir():
        raise UserError(f"--out: {out} is a directory; give a file name")
    if out.is_file() and not force:  # a device (/dev/null) is written in place, nothing is replaced
        raise UserError(f"--out: {out} exists; pass --force to overwrite it")
