"""Student sizing: `--student-size` turns "4x smaller" into the largest student of the teacher's family under it.

The distillation with `--student-size 0.25` from a WRN-16-2 teacher is test_teachers'
test_exported_program_teacher_sized_to_a_quarter (one run checks the format and the sizing).
"""

import json

import pytest
import torch
import torchvision
from torch import nn

from compressor.core.errors import UserError
from compressor.models import create_model
from compressor.students.sizing import candidates, choose_student_size, family_of, parse_size

from .conftest import RECIPE, run_cli_here, sets
from .test_teachers import assert_same_function

FAST = ("data.limit_train=256", "verify.batch_sizes=[1]", "train.lr=0.01")


def params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_sizes_parse_as_fractions_or_counts():
    assert parse_size(0.25) == ("fraction", 0.25)
    assert parse_size("200k") == ("count", 200_000)
    assert parse_size("1.5M") == ("count", 1_500_000)
    with pytest.raises(UserError, match="neither a fraction"):
        parse_size("a quarter")


def test_families():
    assert [family_of(a) for a in ("wrn-16-2", "resnet34", "resnet18-w0.5", "timm:resnet50", "torchscript:ResNet",
                                   "torchscript:WideResNet", "mobilenet_v3_small")] == [
        "wrn", "resnet", "resnet", "resnet", "resnet", "wrn", None]


def test_candidate_counts_are_the_real_models():
    """Sizing counts parameters on the meta device; they must be those of the models it will build."""
    for c in candidates("wrn", 10, 1)[::9] + candidates("resnet", 10, 1)[::5]:
        assert c.params == params(create_model(c.arch, 10, 1)), c.arch


@pytest.mark.parametrize("teacher", ["wrn-16-2", "wrn-28-10", "resnet34", "resnet50"])
def test_the_largest_student_of_the_family_under_the_target(teacher):
    n = params(create_model(teacher, 10, 1))
    arch, sizing = choose_student_size(teacher, n, 0.25, num_classes=10, input_shape=(1, 28, 28))
    assert sizing["params"] <= 0.25 * n and family_of(arch) == family_of(teacher)
    bigger = [c for c in candidates(family_of(teacher), 10, 1) if c.params > sizing["params"]]
    assert all(c.params > sizing["target_params"] for c in bigger)  # nothing larger fits
    assert sizing["flops"] > 0 and sizing["target"] == "0.25" and arch in sizing["reason"]


def test_absolute_targets_unknown_families_and_impossible_sizes():
    arch, sizing = choose_student_size("resnet34", 21_283_530, "200k", num_classes=10, input_shape=(1, 28, 28))
    assert sizing["params"] <= 200_000 and arch.startswith("resnet")
    arch, sizing = choose_student_size("mobilenet_v3_small", 1_527_818, 0.25, num_classes=10, input_shape=(1, 28, 28))
    assert arch.startswith("wrn-") and sizing["fallback"] and "fallback" in sizing["reason"]
    with pytest.raises(UserError, match="no wrn student has at most 1,000 parameters"):
        choose_student_size("wrn-16-2", 691_386, "1000", num_classes=10, input_shape=(1, 28, 28))
    with pytest.raises(UserError, match="not fewer than the teacher"):
        choose_student_size("wrn-16-2", 691_386, "1M", num_classes=10, input_shape=(1, 28, 28))


def check_report(report: dict, family: str) -> None:
    sizing, student, teacher = report["student"]["sizing"], report["student"], report["teacher"]
    assert sizing["how"] == "sized" and sizing["target"] == "0.25" and sizing["family"] == family
    assert student["arch"] == sizing["arch"] and student["arch"].startswith({"wrn": "wrn-", "resnet": "resnet"}[family])
    assert student["params"] == sizing["params"] <= 0.25 * teacher["params"]
    assert student["flops"] == sizing["flops"] and sizing["target_params"] == int(0.25 * teacher["params"])


def test_quarter_of_a_torchvision_resnet34_state_dict(tmp_path):
    """Also the distillation from a torchvision ResNet teacher given as a state_dict (issue 4)."""
    torch.manual_seed(0)
    teacher = torchvision.models.resnet34(num_classes=10)
    teacher.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # grey-scale Fashion-MNIST
    torch.save(teacher.state_dict(), tmp_path / "resnet34.pt")
    out = tmp_path / "run"
    r = run_cli_here("distill", tmp_path / "resnet34.pt", "--recipe", RECIPE, "--out", out, "--student-size", "0.25",
                *sets(*FAST, "teacher.arch=resnet34", "student.init=scratch"))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "report.json").read_text())
    check_report(report, "resnet")
    assert report["teacher"]["source"] == "state_dict" and report["teacher"]["params"] == params(teacher)
    # auto pairs on 28x28 images: layer1 7x7, layer2 4x4, layer3 2x2 (layer4 is 1x1: a constant attention map)
    assert [(p["teacher"], p["student"], p["teacher_shape"][1:]) for p in report["distillation"]["pairs"]] == [
        ("layer1", "layer1", [7, 7]), ("layer2", "layer2", [4, 4]), ("layer3", "layer3", [2, 2])]
    assert_same_function(out / "teacher.onnx", teacher)
