"""How fast is a distillation step: against its floor, and against torchdistill, on one machine in one run.

    .venv/bin/python benchmarks/distill_throughput.py --quick      # under 2 minutes on a quiet 2-core CPU
    .venv/bin/python benchmarks/distill_throughput.py              # 20 steps x 5 rounds: the documented figures
    make bench                                                     # creates .venv-bench (torchdistill), then this

WRN-16-2 teacher -> WRN-16-1 student, Fashion-MNIST (1x28x28, 10 classes), batch 128, the same thread count
(`--threads`, default all cores) for all four measurements, in images per second:

  a  the student's plain training step (forward, cross-entropy, backward, SGD) on batches already on the device
  b  the teacher's inference (eval, inference_mode) on the same batches
  c  compressor's AT+KD distillation: `compressor.train.loop.fit()` itself, one epoch of `--steps` batches, timed
     around the call: its batched augmentation, hooks, loss terms, optimiser, end-of-epoch checkpoint; nothing
     subtracted
  d  torchdistill's AT+KD (ATLoss mode "code" + KDLoss) driven by its distillation box over a torchvision
     DataLoader with per-image transforms (benchmarks/torchdistill_run.py; runs from .venv-bench)

A step costs at least a + b, so floor = 1 / (1/a + 1/b). The four run interleaved, round by round (the order
rotates each round), after a one-step warm-up round; each figure is the median over the rounds, so a load change
hits all four alike. Progress goes to stderr; the last line of stdout is one JSON object. The load average is
recorded at the start and the end: numbers taken with a load above the core count are not a machine's figures.
`by_cpu_time` repeats the figures by this process's CPU time, which barely moves with other jobs' load when
--threads is 1 (and torchdistill has no DataLoader workers, whose time it would miss); `--compile` adds e: c with
`train.compile: true` (torch.compile; it compiles in the warm-up round, timed apart), interleaved with the rest.
fit() folds the frozen teacher's BN into its convs itself, so c includes that (a and b are plain eager PyTorch).

--set applies recipe overrides to compressor's run (c) and to a and b where they apply (train.channels_last,
train.amp, train.batch_size), e.g. `--set train.channels_last=false` to measure the memory format.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torchdistill_run as td
from torch.nn import functional as F

from compressor.core.device import amp_dtype, autocast, environment, memory_format
from compressor.core.errors import CompressorError
from compressor.data.batches import Batches
from compressor.data.transform import Normalize
from compressor.data.datasets import load_data
from compressor.data.splits import Split
from compressor.distill.pairs import find_pairs
from compressor.models import create_model
from compressor.recipe.load import load_recipe
from compressor.train.loop import FitSpec, fit
from compressor.train.state import StatePaths
from compressor.train.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "fashion_at.yaml"
TEACHER, STUDENT = "wrn-16-2", "wrn-16-1"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="8 steps x 3 rounds (default 20 x 5)")
    p.add_argument("--steps", type=int, help="batches per measurement (default 20, --quick 8)")
    p.add_argument("--repeats", type=int, help="measured rounds (default 5, --quick 3)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch intra-op threads")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("COMPRESSOR_DATA", ROOT / "data")),
                   help="folder holding FashionMNIST/raw/")
    p.add_argument("--teacher", type=Path, help="a compressor teacher checkpoint (default: random init, BN calibrated)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override for compressor's run (repeatable)")
    p.add_argument("--compile", action="store_true",
                   help="also measure c with train.compile=true, as `compressor_compiled_img_s`")
    p.add_argument("--skip-torchdistill", action="store_true", help="measure a, b, c only")
    p.add_argument("--bench-venv", type=Path, default=td.DEFAULT_VENV, help="torchdistill's venv")
    p.add_argument("--no-install", action="store_true", help="do not create the bench venv when it is missing")
    p.add_argument("--td-workers", type=int, default=0,
                   help="torchdistill DataLoader workers (0: measured fastest on 2 cores, see docs/BENCHMARKS.md)")
    args = p.parse_args(argv)
    args.steps = args.steps or (8 if args.quick else 20)
    args.repeats = args.repeats or (3 if args.quick else 5)
    if args.steps < 1 or args.repeats < 1 or args.threads < 1:
        p.error("--steps, --repeats and --threads must be positive")
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calibrated_teacher(batches: list[torch.Tensor], num_classes: int) -> torch.nn.Module:
    """A random-init teacher whose BN running statistics come from real batches, so its eval-mode activations
    (and the KD targets) have a trained network's scale; the cost of a forward does not depend on the weights."""
    teacher = create_model(TEACHER, num_classes, batches[0].shape[1])
    for m in teacher.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average over the calibration batches
    teacher.train()
    with torch.no_grad():
        for x in batches[:4]:
            teacher(x.float())
    return teacher.eval()


class Bench:
    """Everything the four measurements share, built once: recipe, data, models, normalised batches."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        overrides = [f"data.root={args.data}", "data.val_fraction=0", "train.epochs=1", *args.overrides]
        self.recipe = recipe = load_recipe(RECIPE, overrides)
        self.batch = recipe.train.batch_size
        self.data = load_data(recipe.data.model_copy(update={"limit_train": args.steps * self.batch}), recipe.seed)
        self.memory_format = memory_format(recipe.train.channels_last)
        self.dtype = amp_dtype(recipe.train.amp, self.device)
        normalize = Normalize(self.data.mean, self.data.std, self.device, self.memory_format)
        train = self.data.train.to(self.device)
        pairs_xy = list(Batches(train, self.batch, normalize, drop_last=True))
        self.batches = [x for x, _ in pairs_xy]  # (B, 1, 28, 28) normalised, in the trainer's memory format
        self.labels = [y for _, y in pairs_xy]
        if args.teacher:
            from compressor.models.checkpoint import load_model

            teacher, _ = load_model(args.teacher)
        else:
            teacher = calibrated_teacher([b.cpu() for b in self.batches], self.data.num_classes)
        shape = self.data.input_shape
        student = create_model(STUDENT, self.data.num_classes, shape[0])
        self.pairs = find_pairs("auto", teacher, student, shape)  # as the distill job passes them
        # one copy per measurement: fit() and torchdistill each change the teacher they are given (memory
        # format, hooks, requires_grad), and neither should see the other's changes
        self.teacher_b = copy.deepcopy(teacher).to(self.device, memory_format=self.memory_format).eval()
        self.teacher_c = copy.deepcopy(teacher)
        self.recipe_e = recipe.model_copy(update={"train": recipe.train.model_copy(update={"compile": True})})
        self.teacher_d = copy.deepcopy(teacher).to(self.device)
        self.student_a = create_model(STUDENT, self.data.num_classes, shape[0]).to(
            self.device, memory_format=self.memory_format).train()
        self.opt_a, _ = build_optimizer(self.student_a, recipe.train, 1, args.steps)
        self.tmp = Path(tempfile.mkdtemp(prefix="distill-bench-"))
        self.loop_img_s: list[float] = []
        self.td_reason: str | None = "skipped (--skip-torchdistill)" if args.skip_torchdistill else None
        self.td_version: str | None = None
        if not args.skip_torchdistill:
            self._setup_torchdistill()

    def _setup_torchdistill(self) -> None:
        module, self.td_reason = td.load(self.args.bench_venv, install=not self.args.no_install)
        if module is None:
            return
        self.td_version = module.__version__
        cfg, at, kd = self.recipe.train, self.recipe.distill.at, self.recipe.distill.kd
        self.td_dataset = td.fashion_mnist_loader_dataset(self.args.data, self.args.steps * self.batch,
                                                          self.data.mean, self.data.std)
        self.td_config = lambda steps: td.train_config(
            [(p.teacher.module, p.student.module) for p in self.pairs], batch_size=self.batch, workers=self.args.td_workers, steps=steps,
            lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, beta=at.beta, alpha=kd.alpha,
            temperature=kd.temperature, pin_memory=self.device.type == "cuda",
        )

    # ---- the four measurements: each prepares `steps` batches of work and returns a call that does it and
    # ---- returns the number of images; `timed` runs it between two clock readings

    def student_step(self, steps: int):
        model, opt = self.student_a, self.opt_a

        def go() -> int:
            for i in range(steps):
                with autocast(self.device, self.dtype):
                    loss = F.cross_entropy(model(self.batches[i]).float(), self.labels[i])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return steps * self.batch

        return go

    def teacher_inference(self, steps: int):
        def go() -> int:
            with torch.inference_mode(), autocast(self.device, self.dtype):
                for i in range(steps):
                    self.teacher_b(self.batches[i])
            return steps * self.batch

        return go

    def compressor(self, steps: int, recipe=None):
        recipe = recipe or self.recipe
        teacher = self.teacher_c
        n = steps * self.batch
        data = replace(self.data, train=Split(self.data.train.images[:n], self.data.train.labels[:n]))
        student = create_model(STUDENT, self.data.num_classes, self.data.input_shape[0])

        def go() -> int:
            result = fit(student, data, FitSpec.of(recipe, "distill", teacher, epochs=1),
                StatePaths(self.tmp / "train_state.pt", self.tmp / "metrics.jsonl"), device=self.device,
                teacher=teacher, pairs=self.pairs)
            if recipe is self.recipe:
                self.loop_img_s.append(result.images_per_second)  # fit's own figure: the epoch loop alone
            return n

        return go

    def compressor_compiled(self, steps: int):
        return self.compressor(steps, self.recipe_e)

    def torchdistill(self, steps: int):
        if self.td_reason:
            return None
        dataset = torch.utils.data.Subset(self.td_dataset, range(steps * self.batch))
        student = create_model(STUDENT, self.data.num_classes, self.data.input_shape[0])
        config = self.td_config(steps)
        return lambda: td.run_epoch(self.teacher_d, student, dataset, config, self.device)


def timed(go, device: torch.device) -> dict | None:
    """Images/s of one call by the wall clock, and by this process's CPU time: with one thread and no
    DataLoader workers the CPU figure barely moves when other jobs load the machine, the wall figure does."""
    if go is None:
        return None
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    images = go()
    sync(device)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"wall": images / wall, "cpu": images / cpu if cpu > 0 else None}


def median(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def paired(samples: dict, x: str, y: str, clock: str) -> list[float]:
    """x / y round by round: the two ran back to back, so a load change between rounds cancels."""
    return [p[clock] / q[clock] for p, q in zip(samples[x], samples[y]) if p and q and p[clock] and q[clock]]


def summary(a: float, b: float, c: float, d: float | None) -> dict:
    floor = 1.0 / (1.0 / a + 1.0 / b)
    return {
        "student_train_img_s": round(a, 1),
        "teacher_infer_img_s": round(b, 1),
        "floor_img_s": round(floor, 1),
        "compressor_img_s": round(c, 1),
        "ratio_to_floor": round(c / floor, 3),
        "torchdistill_img_s": round(d, 1) if d else None,
        "ratio_vs_torchdistill": round(c / d, 3) if d else None,
    }


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    bench = Bench(args)
    kinds = {"a": bench.student_step, "b": bench.teacher_inference, "c": bench.compressor, "d": bench.torchdistill}
    if args.compile:
        kinds["e"] = bench.compressor_compiled
    samples: dict[str, list] = {k: [] for k in kinds}
    order = list(kinds)
    log(f"warm-up round (1 step each), then {args.repeats} rounds of {args.steps} steps x batch {bench.batch}, "
        f"{args.threads} threads, load average {load_start[0]:.2f}")
    warmup = {}
    for k in order:
        w0 = time.perf_counter()
        timed(kinds[k](1), bench.device)
        warmup[k] = time.perf_counter() - w0
    for r in range(args.repeats):
        rotated = order[r % len(order):] + order[: r % len(order)]  # no measurement always runs first
        for k in rotated:
            samples[k].append(timed(kinds[k](args.steps), bench.device))
        log(f"round {r + 1}/{args.repeats}: " + ", ".join(
            f"{k} {samples[k][-1]['wall']:.1f}" for k in order if samples[k][-1] is not None) + " img/s")
    wall = {k: median([x["wall"] for x in v if x]) for k, v in samples.items()}
    cpu = {k: median([x["cpu"] for x in v if x]) for k, v in samples.items()}
    if args.td_workers:  # the workers' CPU time is not this process's
        cpu["d"] = None
    env = environment(bench.device)
    shutil.rmtree(bench.tmp, ignore_errors=True)
    return {
        "benchmark": "distill_throughput",
        "teacher": TEACHER,
        "student": STUDENT,
        "batch_size": bench.batch,
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "device": env["device"],
        **summary(wall["a"], wall["b"], wall["c"], wall["d"]),
        "torchdistill_reason": bench.td_reason,
        # fit()'s own images/s over its epoch loop, without its set-up and end-of-epoch checkpoint (c has them)
        "compressor_loop_img_s": round(median(bench.loop_img_s[1:]), 1),
        **({"compressor_compiled_img_s": round(wall["e"], 1),
            "compiled_gain": round(median(paired(samples, "e", "c", "wall")) - 1, 3),
            "compiled_ratio_vs_torchdistill": round(wall["e"] / wall["d"], 3) if wall["d"] else None,
            "compile_warmup_s": round(warmup["e"], 1)}
           if args.compile else {}),
        "by_cpu_time": summary(cpu["a"], cpu["b"], cpu["c"], cpu["d"]) if bench.device.type == "cpu" else None,
        "samples_img_s": {k: [round(x["wall"], 1) if x else None for x in v] for k, v in samples.items()},
        "settings": {"channels_last": bench.recipe.train.channels_last, "amp": str(bench.dtype),
                     "overrides": args.overrides, "td_workers": args.td_workers,
                     "teacher_weights": str(args.teacher) if args.teacher else "random, BN calibrated"},
        "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "cpu": env["cpu"],
        "cpu_count": env["cpu_count"],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "versions": {"python": env["python"], "torch": env["torch"],
                     "torchvision": __import__("torchvision").__version__, "torchdistill": bench.td_version},
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        log("error: --device cuda: no CUDA device")
        return 2
    try:
        result = run(args)
    except CompressorError as e:  # a bad --set or missing data: the library's one-line messages
        for problem in e.problems:
            log(f"error: {problem}")
        return e.exit_code
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
