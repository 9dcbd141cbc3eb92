"""The fixed-seed CPU distillations whose loss terms tests/test_golden.py compares with tests/golden/loss_terms.json.

Each case is the real `compress distill` (a subprocess, one thread, fp32) from a seeded untrained WRN-10-1 teacher
to a WRN-16-1 student on 256 Fashion-MNIST images, two epochs of two steps each; what is compared is every row of
metrics.jsonl: each named loss term's epoch mean, the train accuracy and the learning rate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "tests" / "smoke.yaml"

COMMON = [
    "data.limit_train=256", "data.limit_test=64", "data.val_fraction=0.25", "train.epochs=2", "train.batch_size=96",
    "train.log_every=1", "verify.min_runs=2", "verify.min_seconds=0", "verify.warmup=0", "verify.min_speedup=null",
    "verify.max_accuracy_drop=null", "verify.batch_sizes=[1]", "distill.at.beta_schedule=cosine",
]
# The same arithmetic on every x86 CPU: one thread; ATen's scalar kernels (no AVX2/AVX-512 dispatch); convolutions
# through ATen's own im2col + MKL GEMM rather than oneDNN's or NNPACK's kernels, whose blocking depends on the CPU;
# MKL in its conditional-numerical-reproducibility mode. Measured here (AVX-512 EPYC): with the machine's own kernels,
# emulating an AVX2 machine moved the second epoch's terms by up to 4e-2 relative; under these settings, not at all.
SAME_EVERYWHERE = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default",
                   "MKL_CBWR": "COMPATIBLE"}
CLI = ("import sys, runpy, torch; torch.backends.mkldnn.enabled = False; torch.backends.nnpack.set_flags(False); "
       "sys.argv = ['compress', *sys.argv[1:]]; runpy.run_module('compressor', run_name='__main__')")
CASES = {
    "at_kd": [],
    "at_kd_grad_at_feature": ["distill.grad_at.enabled=true", "distill.grad_at.flip=true",
                              "distill.feature.enabled=true"],
}


def make_teacher(path: Path) -> Path:
    """A seeded, untrained WRN-10-1 Fashion-MNIST checkpoint: the same weights on every machine."""
    from compressor.data.datasets import NORMALISATION
    from compressor.models import checkpoint as ckpt_io
    from compressor.models import create_model

    torch.manual_seed(0)
    mean, std = NORMALISATION["fashion_mnist"]
    ck = ckpt_io.model_checkpoint(create_model("wrn-10-1", 10, 1), arch="wrn-10-1", classes=[str(i) for i in range(10)],
                                  input_shape=(1, 28, 28), mean=mean, std=std, dataset="fashion_mnist", kind="teacher")
    ckpt_io.save(ck, path)
    return path


def run_case(name: str, tmp: Path) -> list[dict]:
    teacher = tmp / "teacher.pt"
    if not teacher.exists():
        make_teacher(teacher)
    out = tmp / name
    sets = []
    for o in (*COMMON, *CASES[name]):
        sets += ["--set", o]
    env = {**os.environ, **SAME_EVERYWHERE, "COMPRESSOR_DATA": str(ROOT / "data"), "COMPRESSOR_CPU_BF16": "0"}
    r = subprocess.run([sys.executable, "-c", CLI, "distill", str(teacher), "--recipe", str(RECIPE),
                        "--out", str(out)] + sets, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{name}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{"epoch": row["epoch"], "lr": row["lr"], "train_accuracy": row["train_accuracy"],
             "train_loss": row["train_loss"], "val_accuracy": row.get("val_accuracy")} for row in rows]
