"""`compress train`: a teacher trained from scratch, saved as a self-describing checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from compressor.core import distributed
from compressor.core.device import resolve_device, seed_everything
from compressor.core.errors import UserError
from compressor.core.progress import Listener, Reporter, TerminalProgress, console
from compressor.data.datasets import data_root, load_data
from compressor.jobs.common import batches_for, recompute_batchnorm, run_inputs
from compressor.jobs.outdir import claim, claimed, remove_leftovers
from compressor.jobs.paths import CheckpointPaths
from compressor.models import checkpoint as ckpt_io
from compressor.models import create_model
from compressor.models.batchnorm import STALE_LIMIT, init_residue
from compressor.models.evaluate import evaluate
from compressor.models.measure import count_params
from compressor.recipe.schema import Recipe
from compressor.train.loop import FitSpec, fit


def train_teacher(recipe: Recipe, out: Path, *, resume: bool = False, force: bool = False,
                  progress: Listener | None = None, cancel: Callable[[], bool] | None = None) -> dict:
    """`compress train`: train the recipe's teacher from scratch; writes a self-describing checkpoint.
    `progress` and `cancel` as for jobs.distill.distill."""
    if out.exists() and out.is_dir():
        raise UserError(f"--out: {out} is a directory; give the checkpoint's file name (e.g. {out}/teacher.pt)")
    paths = CheckpointPaths(out)
    state_path, metrics_path = paths.state, paths.metrics
    dev = distributed.setup(resolve_device(recipe.device), recipe.train)  # joins torchrun's processes
    held = distributed.on_main(claim, paths, resume=resume, force=force, inputs=run_inputs(None, recipe),
                               data_root=data_root(recipe.data))
    listeners = [TerminalProgress(), *([progress] if progress else [])] if distributed.is_main() else []
    reporter = Reporter("train", listeners, cancel)
    return claimed(held, lambda: _train_teacher(recipe, out, dev, state_path, metrics_path, resume, reporter),
                   state_path)


def _train_teacher(recipe: Recipe, out: Path, dev, state_path: Path, metrics_path: Path, resume: bool,
                   reporter: Reporter) -> dict:
    distributed.on_main(remove_leftovers, CheckpointPaths(out))
    seed_everything(recipe.seed)
    data = load_data(recipe.data, recipe.seed)
    model = create_model(recipe.teacher.arch, data.num_classes, data.input_shape[0])
    epochs = recipe.teacher.epochs or recipe.train.epochs
    console.print(
        f"training teacher [bold]{recipe.teacher.arch}[/] ({count_params(model) / 1e6:.2f}M params) on "
        f"{data.name}: {len(data.train)} train / {len(data.val) if data.val else 0} val / {len(data.test)} test images, "
        f"{epochs} epochs, device {dev}"
    )
    result = fit(model, data, FitSpec.of(recipe, "teacher", None, epochs), CheckpointPaths(out), device=dev,
                 resume=resume, reporter=reporter)
    if not distributed.finish():  # the other ranks are done; rank 0 tests and saves
        return {}
    refreshed = _refresh_batchnorm(result, recipe, data, dev)
    reporter.phase("testing", "test accuracy")
    test = evaluate(result.model, batches_for(data.test, data, dev, recipe, result.eval_batch), dev)
    ck = ckpt_io.model_checkpoint(
        result.model, arch=recipe.teacher.arch, classes=data.classes, input_shape=data.input_shape,
        mean=data.mean, std=data.std, dataset=data.name, preprocess=data.preprocess.to_dict(), kind="teacher",
        metrics={"test_accuracy": test["accuracy"], "best_epoch": result.best_epoch,
                 "val_accuracy": result.best_val_accuracy, "epochs": epochs, "bn_recalibrated": refreshed},
        recipe=recipe.model_dump(mode="json"),
    )
    ckpt_io.save(ck, out)
    console.print(f"teacher test accuracy {test['accuracy']:.2f}% (best epoch {result.best_epoch}); wrote {out}")
    return {"path": str(out), "test_accuracy": test["accuracy"], "best_epoch": result.best_epoch}


def _refresh_batchnorm(result, recipe: Recipe, data, dev) -> dict | None:
    """Recompute the teacher's BatchNorm statistics on the calibration sample when training was too short for its
    momentum to wash out the initial variance of 1 (models.batchnorm.init_residue: torchvision's MobileNetV3,
    momentum 0.01, over a few hundred steps). Longer runs are left exactly as trained."""
    steps = result.steps * result.best_epoch // max(len(result.history), 1)  # the kept epoch's: best by validation
    residue = init_residue(result.model, steps)
    if residue <= STALE_LIMIT:
        return None
    n = recompute_batchnorm(result.model, recipe, data, dev, f"after {steps} training steps {residue:.0%} of a "
                            "layer's running variance was still its initial value")
    return {"init_residue": residue, "steps": steps, "images": n}
