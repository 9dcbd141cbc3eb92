"""The benchmark scripts run and print what docs/BENCHMARKS.md quotes; the teacher BN folding and the fused attention map compute what they replace.

The throughput smoke run measures one step of each kind on real Fashion-MNIST, without torchdistill (its venv
is not part of the test environment); no timing is asserted, only that the figures exist and fit together.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from compressor.distill.at import channel_energy
from compressor.distill.points import FeatureTap
from compressor.models import create_model
from compressor.teachers.fold import conv_bn_pairs, fold_batchnorm

from .conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "distill_throughput.py"
KEYS = {"floor_img_s", "compressor_img_s", "ratio_to_floor", "torchdistill_img_s", "ratio_vs_torchdistill",
        "student_train_img_s", "teacher_infer_img_s", "threads", "load_average", "versions", "cpu"}


def bench(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def check_figures(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert KEYS <= out.keys()
    a, b, floor, c = (out[k] for k in ("student_train_img_s", "teacher_infer_img_s", "floor_img_s", "compressor_img_s"))
    assert min(a, b, c) > 0
    assert floor == pytest.approx(1 / (1 / a + 1 / b), rel=1e-2)  # the floor is below both of its parts
    assert out["ratio_to_floor"] == pytest.approx(c / floor, rel=1e-2)
    return out


def test_throughput_quick_without_torchdistill():
    out = check_figures(bench("--quick", "--steps", "1", "--repeats", "1", "--threads", "1", "--skip-torchdistill"))
    assert out["threads"] == 1
    assert out["torchdistill_img_s"] is None and out["ratio_vs_torchdistill"] is None
    assert "skip" in out["torchdistill_reason"]
    assert len(out["samples_img_s"]["c"]) == 1


@pytest.mark.e2e  # trains or grows real models: tens of seconds on 2 cores
def test_throughput_bad_override_is_one_line_exit_2():
    r = bench("--quick", "--skip-torchdistill", "--set", "train.batch_size=0")
    assert r.returncode == 2
    assert "train.batch_size" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_throughput_on_cuda():
    out = check_figures(bench("--device", "cuda", "--steps", "4", "--repeats", "1", "--skip-torchdistill"))
    assert out["device"] != "cpu"


def calibrated(arch: str) -> torch.nn.Module:
    """A model whose BN layers hold non-trivial running statistics (eval BN is not the identity)."""
    torch.manual_seed(0)
    model = create_model(arch, 10, 1).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 1, 28, 28) * 2 + 0.5)
    return model.eval()


def test_fold_batchnorm_keeps_logits_and_attention_points():
    teacher = calibrated("wrn-16-2")
    points = ["group0", "group1", "group2"]
    folded = fold_batchnorm(teacher, keep=points)
    bns = lambda m: sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())  # noqa: E731
    assert bns(folded) == bns(teacher) - len(conv_bn_pairs(teacher)) < bns(teacher)
    assert bns(teacher) == 13  # the caller's model is untouched

    x = torch.randn(16, 1, 28, 28)
    taps = FeatureTap(teacher, points), FeatureTap(folded, points)
    with torch.no_grad():
        ref, out = teacher(x), folded(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for r, o in zip(taps[0].take(), taps[1].take()):  # the attention points see the same feature maps
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)


def test_fold_batchnorm_leaves_a_hooked_conv_alone():
    model = calibrated("wrn-16-2")
    conv, bn = conv_bn_pairs(model)[1]  # ("group0.0.conv0", "group0.0.bn1")
    folded = fold_batchnorm(model, keep=[conv])
    assert isinstance(folded.get_submodule(bn), torch.nn.BatchNorm2d)
    assert folded.get_submodule(conv).bias is None  # not folded: still the bias-free conv


@pytest.mark.parametrize("shape", [(8, 16, 28, 28), (4, 64, 7, 7)])
def test_channel_energy_equals_the_attention_maps_inner_part(shape):
    a = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    b = a.detach().clone().requires_grad_()
    ref, out = b.pow(2).mean(1), channel_energy(a)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    ref.backward(g)
    out.backward(g)
    torch.testing.assert_close(a.grad, b.grad)
    small = (a.detach()[:2, :3, :4, :4].clone().requires_grad_(),)
    assert torch.autograd.gradcheck(channel_energy, small)
    assert torch.autograd.gradgradcheck(channel_energy, small)  # grad AT differentiates through a backward
