"""Students grown from teachers of every common family (issue 25): random-init torchvision MobileNetV3, EfficientNet
and RegNet and a timm ConvNeXt (ResNets: tests/test_pruning.py, tests/test_latency.py), saved as state_dicts,
distilled for a few steps on 3-channel 32 px Fashion-MNIST at a quarter of the teacher's parameters: the student
keeps PyTorch/ONNX parity and is measured faster than its teacher at batch 1 (in the run's alternating rounds).
Before models.batchnorm's recalibration the MobileNetV3 and EfficientNet students failed parity by 1e5 and 3e6
against limits of 4e4 and 2e3: eval-mode logits of 5e9 on BatchNorm statistics 93 % stale after a few steps at
MobileNetV3's BatchNorm momentum 0.01 (48 % after 7 steps at EfficientNet's 0.1).

Also the BatchNorm helpers on small modules."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compressor.models import create_model
from compressor.models.batchnorm import recalibrate_bn, stale_fraction

from .conftest import RECIPE, run_cli_here, sets

FAMILIES = ["mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "timm:convnext_atto"]
RGB32 = ("data.image_size=32", "data.channels=3", "data.limit_train=256", "data.limit_test=100", "train.lr=0.02",
         "verify.batch_sizes=[1]", "verify.min_speedup=null", "verify.min_runs=20", "student.arch=null",
         "student.init=teacher")


@pytest.mark.parametrize("arch", FAMILIES)
def test_a_grown_student_of_each_family_keeps_parity_and_is_faster(arch, tmp_path):
    if arch.startswith("timm:"):
        pytest.importorskip("timm", reason="timm is an optional extra: pip install 'compressor[timm]'")
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pt"
    torch.save(create_model(arch, 10, 3).state_dict(), teacher)
    out = tmp_path / "run"
    r = run_cli_here("distill", teacher, "--recipe", RECIPE, "--out", out, "--student-size", "0.25",
                     *sets(*RGB32, f"teacher.arch={arch}"))
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert report["passed"] and report["student"]["sizing"]["how"] == "pruned"
    assert report["student"]["params"] <= 0.25 * report["teacher"]["params"]
    gates = {g["name"]: g for g in report["gates"]}
    assert gates["max_abs_diff"]["passed"] and gates["teacher_max_abs_diff"]["passed"]
    # faster than its teacher in the run's alternating rounds at batch 1. Not the pooled median: at 32 px these are
    # 0.1-0.3 ms inferences, and under the suite's other worker the median of one run measured 0.88x for a student
    # 1.5x faster on a quiet machine (docs/RESULTS.md has the quiet numbers); the fastest round is robust to that
    low, high = report["latency"]["speedup_interval"]["1"]
    assert high > 1.0, report["latency"]
    # a few steps leave stale statistics (torchvision's MobileNetV3: momentum 0.01; EfficientNet, RegNet: 0.1, 5 % or
    # less left after 29 steps, here 2): recomputed, and said
    refreshed = report["distillation"]["bn_recalibrated"]
    if arch != "timm:convnext_atto":  # LayerNorm: no running statistics
        assert refreshed is not None and refreshed["stale_fraction"] > 0.05 and refreshed["images"] > 0
        assert "BatchNorm statistics recomputed" in " ".join((r.stdout + r.stderr).split())
    else:
        assert refreshed is None


def test_recalibration_runs_only_the_batchnorms_in_training_mode():
    """Dropout (and stochastic depth) stay in eval mode while the statistics are gathered: the running mean is the
    mean of what inference feeds the BatchNorm, the same on every call (update_bn, the whole model in training
    mode, gathered it over randomly zeroed activations)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    model = nn.Sequential(conv, nn.Dropout(0.5), nn.BatchNorm2d(4, momentum=0.01))
    batches = [torch.randn(8, 3, 6, 6) for _ in range(3)]
    seen = recalibrate_bn(model, batches)
    with torch.no_grad():
        features = torch.cat([conv(x) for x in batches])  # (24, 4, 4, 4): what the BatchNorm sees at inference
    bn = model[2]
    assert seen == 24 and not model.training and bn.momentum == 0.01  # momentum restored
    torch.testing.assert_close(bn.running_mean, features.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    first = bn.running_mean.clone()
    recalibrate_bn(model, [(x, torch.zeros(8)) for x in batches])  # (images, labels) batches too
    torch.testing.assert_close(bn.running_mean, first, rtol=0, atol=0)


def test_stale_fraction_follows_the_momentum():
    assert stale_fraction(nn.Sequential(nn.BatchNorm2d(2, momentum=0.01)), 8) == pytest.approx(0.99 ** 8)
    mixed = nn.Sequential(nn.BatchNorm2d(2, momentum=0.1), nn.BatchNorm1d(2, momentum=0.01))
    assert stale_fraction(mixed, 100) == pytest.approx(0.99 ** 100)  # the stalest layer counts
    assert stale_fraction(nn.Sequential(nn.BatchNorm2d(2, momentum=None)), 1) == 0.0  # a cumulative average
    assert stale_fraction(nn.Sequential(nn.LayerNorm(2)), 1) == 0.0


def test_init_residue_is_the_leftover_of_variance_one_in_what_is_left():
    from compressor.models.batchnorm import init_residue

    bn = nn.BatchNorm2d(4, momentum=0.01)
    bn.running_var.fill_(0.0603)  # 0.99^280 = 0.0600 of it is the initial 1
    assert init_residue(nn.Sequential(bn), 280) == pytest.approx(0.99 ** 280 / 0.0603)
    bn.running_var.fill_(5.0)
    assert init_residue(nn.Sequential(bn), 280) == pytest.approx(0.99 ** 280 / 5.0)
    assert init_residue(nn.Sequential(nn.BatchNorm2d(4, momentum=0.1)), 400) < 1e-15
    assert init_residue(nn.Sequential(nn.Conv2d(1, 1, 1)), 3) == 0.0


def test_a_mobilenet_teacher_trained_briefly_has_its_batchnorm_statistics_recomputed(tmp_path):
    """`compress train` of a torchvision MobileNetV3 (BatchNorm momentum 0.01) for a few steps: the running variance
    is still mostly its initial 1 (measured: a teacher trained 280 steps scored 10 % in eval mode, 75.75 % with
    its statistics recomputed), so the saved teacher's statistics are recomputed on training images and said so;
    its eval-mode logits then vary across images as its training-mode logits do."""
    from compressor.models import checkpoint as ckpt_io

    out = tmp_path / "teacher.pt"
    r = run_cli_here("train", "--recipe", RECIPE, "--out", out,
                     *sets("teacher.arch=mobilenet_v3_small", "data.image_size=32", "data.channels=3",
                           "data.limit_train=320", "data.limit_test=100", "train.batch_size=64", "train.lr=0.05"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    model, ck = ckpt_io.load_model(out)
    refreshed = ck["metrics"]["bn_recalibrated"]
    assert refreshed is not None and refreshed["init_residue"] > 0.05 and refreshed["images"] > 0
    assert "BatchNorm statistics recomputed" in " ".join((r.stdout + r.stderr).split())
    from compressor.data.datasets import load_data
    from compressor.recipe.schema import DataConfig

    data = load_data(DataConfig(name="fashion_mnist", limit_train=64, limit_test=64, channels=3, image_size=32), 0)
    x = data.normalize(torch.device("cpu"))(data.test.images)  # (64, 3, 32, 32): real images, as the model eats them
    with torch.no_grad():
        evaluated = model.eval()(x).std(0).mean()
        trained = model.train()(x).std(0).mean()
    assert 0.1 < evaluated / trained < 10, (evaluated, trained)
