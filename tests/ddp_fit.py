"""One distillation `fit()` on Fashion-MNIST, in one process or under torchrun: the worker of tests/test_ddp.py.

    python tests/ddp_fit.py OUT TEACHER [--set key=value ...] [--norm batch|group] [--resume]
    torchrun --standalone --nproc_per_node 2 tests/ddp_fit.py OUT TEACHER ...

It trains the recipe's student (wrn-16-1) from TEACHER with AT+KD through the library's own path (recipe,
data, `distributed.setup`, `fit`) and leaves in OUT what rank 0 writes: metrics.jsonl, train_state.pt and the
final weights as params.pt. `--norm group` swaps the student's BatchNorm for GroupNorm, whose statistics are
per image, so splitting a batch over processes changes nothing but the order of floating-point sums.
`--float64` trains in double precision, where that order moves the result by ~1e-15 instead of ~1e-6.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from compressor.core.memory import fewer_collections

fewer_collections()  # before torch's import, as the console script does: this process is the test's

import torch
from torch import nn

from compressor.core import distributed
from compressor.core.device import seed_everything
from compressor.data.datasets import load_data
from compressor.distill.pairs import find_pairs
from compressor.models import checkpoint, create_model
from compressor.recipe.load import load_recipe
from compressor.train.loop import FitSpec, fit
from compressor.train.state import StatePaths

RECIPE = Path(__file__).resolve().parent / "smoke.yaml"


def batchnorm_to_groupnorm(model: nn.Module) -> nn.Module:
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, nn.GroupNorm(8, child.num_features))
        else:
            batchnorm_to_groupnorm(child)
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("teacher", type=Path)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--norm", choices=("batch", "group"), default="batch")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--float64", action="store_true", help="train in double precision (the equivalence check)")
    args = ap.parse_args()
    if args.float64:  # models, normalisation constants and losses follow the default dtype
        torch.set_default_dtype(torch.float64)

    recipe = load_recipe(RECIPE, args.sets)
    device = distributed.setup(torch.device("cpu"), recipe.train)
    seed_everything(recipe.seed)
    data = load_data(recipe.data, recipe.seed)
    teacher, _ = checkpoint.load_model(args.teacher)
    teacher.to(torch.get_default_dtype())
    student = create_model(recipe.student.arch, data.num_classes, data.input_shape[0])
    if args.norm == "group":
        batchnorm_to_groupnorm(student)
    pairs = find_pairs("auto", teacher, student, data.input_shape)
    args.out.mkdir(parents=True, exist_ok=True)
    result = fit(
        student, data, FitSpec.of(recipe, "distill", teacher),
        StatePaths(args.out / "train_state.pt", args.out / "metrics.jsonl"), device=device, teacher=teacher,
        pairs=pairs, resume=args.resume,
    )
    if distributed.finish():
        torch.save(result.model.state_dict(), args.out / "params.pt")


if __name__ == "__main__":
    main()
