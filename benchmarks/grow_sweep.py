"""Sweep the student's settings at a fixed budget: the real student (build_student) and the real loop (fit),
scored on the test split in PyTorch; no export or latency (that is `compress distill`'s job).

    .venv/bin/python benchmarks/grow_sweep.py TEACHER.pt --recipe recipes/fashion_at.yaml \
        --config "ce lr0.02=distill.at.enabled=false,distill.kd.enabled=false,train.lr=0.02" \
        --config "atkd=..." --seeds 0 1 2 --out sweep.jsonl

Each --config is `label=key=value,key=value,...` (recipe overrides, as --set takes them). One JSON line per run is
appended to --out (and printed): label, seed, test accuracy, accuracy right after pruning, params, seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compressor.core.device import resolve_device, seed_everything  # noqa: E402
from compressor.data.datasets import load_data  # noqa: E402
from compressor.distill.pairs import find_pairs  # noqa: E402
from compressor.jobs.common import batches_for  # noqa: E402
from compressor.models.evaluate import evaluate
from compressor.models.measure import count_params  # noqa: E402
from compressor.recipe.load import load_recipe  # noqa: E402
from compressor.students.build import build_student  # noqa: E402
from compressor.teachers.load import load_teacher  # noqa: E402
from compressor.train.loop import FitSpec, fit  # noqa: E402
from compressor.train.state import StatePaths  # noqa: E402


def run(teacher_path: Path, recipe_path: Path, sets: list[str], seed: int) -> dict:
    recipe = load_recipe(recipe_path, [*sets, f"seed={seed}"])
    dev = resolve_device(recipe.device)
    seed_everything(recipe.seed)
    data = load_data(recipe.data, recipe.seed)
    teacher, data = load_teacher(teacher_path, recipe.teacher.arch, data)
    student = build_student(recipe, teacher, data)
    uses_pairs = "at" in recipe.methods() or "feature" in recipe.methods()
    pairs = find_pairs(recipe.distill.at.pairs, teacher.model, student.model, data.input_shape) if uses_pairs else []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = fit(student.model, data, FitSpec.of(recipe, "distill", teacher.model),
                     StatePaths(Path(tmp) / "state.pt", Path(tmp) / "metrics.jsonl"), device=dev,
                     teacher=teacher.model, pairs=pairs)
        seconds = time.perf_counter() - t0
    test = evaluate(result.model, batches_for(data.test, data, dev, recipe), dev)
    return {"seed": seed, "accuracy": test["accuracy"], "val_accuracy": result.best_val_accuracy,
            "after_pruning": student.sizing.get("accuracy_after_pruning"), "params": count_params(result.model),
            "methods": recipe.methods(), "train_images": sum(h["train_images"] for h in result.history),
            "seconds": seconds, "images_per_second": result.images_per_second, "threads": torch.get_num_threads()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("teacher", type=Path)
    ap.add_argument("--recipe", type=Path, required=True)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="applied to every config")
    ap.add_argument("--config", action="append", required=True, help="label=key=value,key=value")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for spec in args.config:
        label, _, rest = spec.partition("=")
        sets = [s for s in rest.split(",") if s]
        for seed in args.seeds:
            row = {"label": label, "sets": args.sets + sets, **run(args.teacher, args.recipe, args.sets + sets, seed)}
            line = json.dumps(row)
            print(line, flush=True)
            with args.out.open("a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
