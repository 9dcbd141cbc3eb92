"""On a CUDA device: the whole job through the real CLI, and the loss terms under bf16 autocast.

Marked `gpu` and skipped without a CUDA device (benchmarks/gpu_check.sh runs them on a lent GPU machine).
"""

from __future__ import annotations

import json

import pytest
import torch

from compressor.core.device import amp_dtype
from compressor.distill.objective import Objective
from compressor.distill.pairs import find_pairs
from compressor.distill.points import FeatureTap
from compressor.distill.terms import Step
from compressor.models import create_model
from compressor.recipe.load import load_recipe
from compressor.teachers.fold import fold_batchnorm

from .conftest import RECIPE, run_cli, sets

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
POINTS = ["group0", "group1", "group2"]


def test_train_and_distill_on_cuda_with_bf16_autocast(tmp_path):
    """device auto: torch trains on the GPU, onnxruntime verifies on CUDA if it has the provider, else on CPU."""
    teacher = tmp_path / "teacher.pt"
    r = run_cli("train", "--recipe", RECIPE, "--out", teacher, "--device", "cuda", *sets("data.limit_train=2560"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "run"
    r = run_cli("distill", teacher, "--recipe", RECIPE, "--out", out,
                *sets("data.limit_train=2560", "data.limit_test=1000", "train.epochs=2"))
    assert r.returncode == 0, r.stderr
    assert "device cuda" in r.stdout + r.stderr  # the progress console writes to stderr
    report = json.loads((out / "report.json").read_text())
    assert "cuda" in report["environment"]["device"].lower() or "nvidia" in report["environment"]["device"].lower()
    history = report["distillation"]["history"]
    assert all(torch.isfinite(torch.tensor(list(h["train_loss"].values()))).all() for h in history)
    assert history[1]["train_loss"]["total"] < history[0]["train_loss"]["total"]
    # trained under bf16 autocast, exported and checked in fp32: the ONNX model agrees with PyTorch
    assert report["export"]["max_abs_diff"] <= 1e-4
    for role in ("teacher", "student"):
        assert abs(report[role]["accuracy"] - report[role]["onnx_accuracy"]) <= 0.1, role
    # a 1-epoch teacher, a student of 2 x 18 steps: on the CPU the same run gives 31.7% and 22.3% (chance: 10%)
    assert report["teacher"]["accuracy"] > 20.0 and report["student"]["accuracy"] > 12.0


def test_distill_loss_under_bf16_autocast_matches_fp32():
    """The attention maps and KD are computed in float32 even when the convs run in bf16."""
    dev = torch.device("cuda")
    dtype = amp_dtype("auto", dev)
    assert dtype in (torch.bfloat16, torch.float16)
    torch.manual_seed(0)
    teacher = create_model("wrn-16-2", 10, 1).to(dev).eval()
    student = create_model("wrn-16-1", 10, 1).to(dev).train()
    s_tap, t_tap = FeatureTap(student, POINTS), FeatureTap(teacher, POINTS)
    x = torch.randn(64, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (64,), device=dev)
    pairs = find_pairs("auto", teacher, student, (1, 28, 28))
    loss = Objective.build(load_recipe(RECIPE).distill, [], student, teacher, pairs, dev)

    def terms(autocast: bool) -> dict[str, torch.Tensor]:
        with torch.autocast("cuda", dtype=dtype, enabled=autocast):
            logits = student(x)
            with torch.no_grad():
                t_logits = teacher(x)
        return loss(Step(x, y, logits, t_logits, s_tap.take(), t_tap.take()))

    low, full = terms(True), terms(False)
    assert all(v.dtype == torch.float32 for v in low.values())
    for k in full:
        assert low[k].item() == pytest.approx(full[k].item(), rel=5e-2), k
    low["total"].backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_folded_teacher_on_cuda_gives_the_same_logits_and_points(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare in fp32, not TF32
    torch.manual_seed(0)
    teacher = create_model("wrn-16-2", 10, 1).train()
    with torch.no_grad():
        teacher(torch.randn(128, 1, 28, 28) * 2 + 0.5)  # non-trivial running statistics
    teacher = teacher.cuda().eval()
    folded = fold_batchnorm(teacher, keep=POINTS)
    x = torch.randn(32, 1, 28, 28, device="cuda")
    taps = FeatureTap(teacher, POINTS), FeatureTap(folded, POINTS)
    with torch.no_grad():
        a, b = teacher(x), folded(x)
    for fa, fb in zip(taps[0].take(), taps[1].take()):
        torch.testing.assert_close(fb, fa, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)
