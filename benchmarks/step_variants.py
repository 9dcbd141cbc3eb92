"""Which changes make the distillation step faster on this machine: each variant of the step, interleaved.

    .venv/bin/python benchmarks/step_variants.py                       # 1 thread, 6 steps x 5 rounds, all variants
    .venv/bin/python benchmarks/step_variants.py --variants base,fold --threads 2

The step is train.loop.train_step rebuilt from the same parts (augment_batch, Normalize's arithmetic,
FeatureTap, the objective's AT + KD terms, SGD with the recipe's settings), WRN-16-2 -> WRN-16-1 on 1x28x28 batches of 128, so
that each change can be switched on alone; distill_throughput.py measures fit() itself. Variants:

  base            the plain step: channels_last, teacher under no_grad, attention maps as a.pow(2).mean(1)
                  (fit() before the BN folding and fused maps; since then fit() runs `fold+fused-at`)
  contiguous      NCHW memory format instead of channels_last
  inference-mode  teacher under inference_mode (its outputs cloned: KD's kl_div saves the teacher's probabilities
                  for backward, which inference tensors may not be)
  fold            teacher with BN folded into its convs (compressor.teachers.fold.fold_batchnorm)
  fused-at        attention maps through compressor.distill.at.channel_energy
  fold+fused-at   both
  compile         torch.compile on the student and on the teacher (compile time reported apart)
  fold+fused-at+compile, fold+fused-at+compile-teacher
                  fit()'s step with train.compile (both compiled), or with only the teacher compiled

Each round runs every variant once (order rotating); figures are medians over the rounds, by the process's CPU
time (robust to other jobs when --threads 1) and by the wall clock, plus each variant's median per-round ratio to
base. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch
from torch.nn import functional as F

from compressor.data.transform import Normalize, augment_batch
from compressor.distill.at import channel_energy
from compressor.distill.kd import soft_target_loss
from compressor.distill.points import FeatureTap
from compressor.models import create_model
from compressor.teachers.fold import fold_batchnorm

POINTS = ["group0", "group1", "group2"]  # WRN stage outputs: the attention pairs fit() gets for these models
VARIANTS = ["base", "contiguous", "inference-mode", "fold", "fused-at", "fold+fused-at", "compile",
            "fold+fused-at+compile", "fold+fused-at+compile-teacher"]
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's, as compressor.data.datasets.NORMALISATION


def at_kd_loss(energy, beta: float = 1000.0):
    """The objective's AT + KD terms (kd, ce, beta * AT per pair) with each map's mean_c A² computed by `energy`."""

    def amap(f: torch.Tensor) -> torch.Tensor:
        return F.normalize(energy(f.float()).flatten(1), dim=1)

    def loss(logits, labels, t_logits, s_feats, t_feats):
        terms = {"kd": soft_target_loss(logits, t_logits) * 0.9, "ce": F.cross_entropy(logits, labels) * (1.0 - 0.9)}
        for name, s, t in zip(POINTS, s_feats, t_feats):  # equal spatial sizes for these pairs: no pooling
            terms[f"at.{name}"] = (amap(s) - amap(t)).pow(2).mean() * beta
        terms["total"] = sum(terms.values())
        return terms

    return loss


def plain_energy(a: torch.Tensor) -> torch.Tensor:
    return a.pow(2).mean(1)  # what distill.at.attention_map computed before it used channel_energy


def make_step(variant: str, teacher: torch.nn.Module, images: list[torch.Tensor], labels: list[torch.Tensor]):
    """A function running one distillation step on batch i, for a fresh student and this variant."""
    fmt = torch.contiguous_format if variant == "contiguous" else torch.channels_last
    student = create_model("wrn-16-1", 10, 1).to(memory_format=fmt).train()
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    t = fold_batchnorm(teacher, keep=POINTS) if "fold" in variant else copy.deepcopy(teacher)
    t = t.to(memory_format=fmt).eval().requires_grad_(False)
    s_tap, t_tap = FeatureTap(student, POINTS), FeatureTap(t, POINTS)
    loss_fn = at_kd_loss(channel_energy if "fused-at" in variant else plain_energy)
    both = variant == "compile" or variant.endswith("+compile")
    s_run = torch.compile(student) if both else student
    t_run = torch.compile(t) if both or variant.endswith("compile-teacher") else t
    frozen = torch.inference_mode if variant == "inference-mode" else torch.no_grad
    g = torch.Generator().manual_seed(0)
    # Normalize's `.to(memory_format)` matters: augment_batch returns a channels_last-strided batch, and with one
    # channel that also counts as contiguous, so `.contiguous(fmt)` would keep it and the convs would follow it
    normalize = Normalize((MEAN,), (STD,), torch.device("cpu"), fmt)

    def step(i: int) -> None:
        x = normalize(augment_batch(images[i], 4, True, g))  # (B, 1, 28, 28) uint8 -> float, as Batches does
        logits = s_run(x)
        s_feats = s_tap.take()
        with frozen():
            t_logits = t_run(x)
            t_feats = t_tap.take()
        if variant == "inference-mode":
            t_logits, t_feats = t_logits.clone(), [f.clone() for f in t_feats]
        terms = loss_fn(logits, labels[i], t_logits, s_feats, t_feats)
        del s_feats, t_feats
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "base" not in variants:
        p.error(f"--variants: must include base; known: {', '.join(VARIANTS)} (unknown: {unknown})")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = os.getloadavg()
    images = [torch.randint(0, 256, (128, 1, 28, 28), dtype=torch.uint8) for _ in range(args.steps)]
    labels = [torch.randint(0, 10, (128,)) for _ in range(args.steps)]
    teacher = create_model("wrn-16-2", 10, 1).train()
    with torch.no_grad():  # BN running statistics of a trained network's scale (folding uses them)
        for x in images[:3]:
            teacher(x.float() / 255)
    teacher.eval()

    steps, first = {}, {}
    for v in variants:
        w0, c0 = time.perf_counter(), time.process_time()
        steps[v] = make_step(v, teacher, images, labels)
        for i in range(2):  # warm-up; for compile, this is where it compiles
            steps[v](i)
        first[v] = {"wall_s": round(time.perf_counter() - w0, 1), "cpu_s": round(time.process_time() - c0, 1)}
        print(f"{v}: built and warmed up in {first[v]['wall_s']} s", file=sys.stderr, flush=True)
    samples = {v: [] for v in variants}
    for r in range(args.repeats):
        for v in variants[r % len(variants):] + variants[: r % len(variants)]:
            w0, c0 = time.perf_counter(), time.process_time()
            for i in range(args.steps):
                steps[v](i)
            n = args.steps * 128
            samples[v].append({"wall": n / (time.perf_counter() - w0), "cpu": n / (time.process_time() - c0)})
        print(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{v} {samples[v][-1]['cpu']:.0f}" for v in variants)
              + " img/s (CPU time)", file=sys.stderr, flush=True)

    def med(v, clock):
        return round(statistics.median(s[clock] for s in samples[v]), 1)

    def gain(v, clock):
        return round(statistics.median(s[clock] / b[clock] for s, b in zip(samples[v], samples["base"])) - 1, 3)

    print(json.dumps({
        "benchmark": "step_variants",
        "threads": args.threads, "steps": args.steps, "repeats": args.repeats, "batch_size": 128,
        "img_s_cpu_time": {v: med(v, "cpu") for v in variants},
        "img_s_wall": {v: med(v, "wall") for v in variants},
        "gain_vs_base_cpu_time": {v: gain(v, "cpu") for v in variants if v != "base"},
        "gain_vs_base_wall": {v: gain(v, "wall") for v in variants if v != "base"},
        "warmup_2_steps": first,
        "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
