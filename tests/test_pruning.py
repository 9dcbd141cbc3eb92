"""Students grown from the teacher: structured pruning to a target size, the channel plan that rebuilds them
without pickles, one-to-one attention pairs by name, and the real CLI on WRN, torchvision ResNet-18 and timm
teachers (ONNX parity, reload in a fresh process, `compress export` of student.pt, --resume)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

from compressor.core.errors import UserError
from compressor.distill.pairs import pair_auto
from compressor.distill.points import probe_points
from compressor.models import checkpoint as ckpt_io
from compressor.models import create_model
from compressor.models.plan import apply_channel_plan, model_from_plan
from compressor.students.pruning import channel_plan, count_params, grow_student

from .conftest import RECIPE, ROOT, run_cli_here, sets
from .test_imagefolder import write_imagefolder
from .test_teachers import assert_same_function, real_images

FAST = ("verify.batch_sizes=[1]", "data.limit_train=320", "data.limit_test=100", "train.lr=0.02")


def wrn16_2() -> nn.Module:
    torch.manual_seed(0)
    return create_model("wrn-16-2", 10, 1).eval()


@pytest.mark.e2e  # trains or grows real models: tens of seconds on 2 cores
@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.1])
def test_prunes_to_the_largest_student_under_the_target(fraction):
    teacher = wrn16_2()
    full = count_params(teacher)
    target = int(fraction * full)
    student, info = grow_student(teacher, target, input_shape=(1, 28, 28), num_classes=10, criterion="magnitude")
    assert info["params"] == count_params(student) <= target
    assert count_params(student) >= 0.9 * target  # close to it: the ratio is searched, not guessed
    assert count_params(teacher) == full  # the caller's teacher is untouched
    # the teacher's module names, so the attention points pair one-to-one at equal resolution
    assert [n for n, _ in student.named_modules()] == [n for n, _ in teacher.named_modules()]
    pairs = pair_auto(probe_points(teacher, (1, 28, 28)), probe_points(student, (1, 28, 28)))
    assert [(p.teacher.module, p.student.module, p.teacher.shape[1:] == p.student.shape[1:]) for p in pairs] == [
        ("group0", "group0", True), ("group1", "group1", True), ("group2", "group2", True)]
    assert pairs[2].student.shape[0] < pairs[2].teacher.shape[0]  # fewer channels at the same points
    assert student.fc.out_features == 10  # the classifier's outputs are never pruned


@pytest.mark.e2e  # trains or grows real models: tens of seconds on 2 cores
def test_taylor_uses_the_data_and_bn_recalibration_restores_statistics():
    teacher = wrn16_2()
    x = real_images(64)
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))
    target = int(0.25 * count_params(teacher))
    taylor, _ = grow_student(teacher, target, input_shape=(1, 28, 28), num_classes=10, criterion="taylor",
                             grad_batches=lambda: [(x, y)])
    magnitude, _ = grow_student(teacher, target, input_shape=(1, 28, 28), num_classes=10, criterion="magnitude")
    assert count_params(taylor) == count_params(magnitude)  # uniform ratio: same shapes ...
    assert not torch.equal(taylor.group2[0].conv1.weight, magnitude.group2[0].conv1.weight)  # ... other channels
    bn = taylor.group1[0].bn0
    before = bn.running_mean.clone()
    from torch.optim.swa_utils import update_bn  # what students.build recalibrates a grown student with

    update_bn([x], taylor)
    recalibrated = bn.running_mean.clone()
    assert not torch.equal(recalibrated, before)
    # the recalibrated mean is the batch mean of what reaches the layer in a train-mode forward of the same images
    seen = {}
    h = bn.register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0]))
    with torch.no_grad():
        taylor.train()(x)
    h.remove()
    assert torch.allclose(recalibrated, seen["x"].mean((0, 2, 3)), atol=1e-5)


@pytest.mark.e2e  # trains or grows real models: tens of seconds on 2 cores
def test_channel_plan_rebuilds_the_pruned_model_from_plain_data():
    teacher = wrn16_2()
    student, _ = grow_student(teacher, 150_000, input_shape=(1, 28, 28), num_classes=10, criterion="magnitude")
    plan = channel_plan(student, create_model("wrn-16-2", 10, 1))
    assert plan["group2.0.conv1"]["out_channels"] < 128 and "conv0" not in plan  # the stem is kept by default
    json.dumps(plan)  # plain data
    rebuilt = model_from_plan("wrn-16-2", plan, student.state_dict(), 10, 1).eval()
    x = real_images(8)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), student(x))
    with pytest.raises(ValueError, match="not a channel attribute"):
        apply_channel_plan(create_model("wrn-16-2", 10, 1), {"fc": {"weight": 3}}, {})
    with pytest.raises(RuntimeError):  # a plan that does not fit the weights fails the strict load
        model_from_plan("wrn-16-2", {}, student.state_dict(), 10, 1)


def test_an_unreachable_target_is_a_user_error():
    with pytest.raises(UserError, match="still leaves more than the target 100"):
        grow_student(wrn16_2(), 100, input_shape=(1, 28, 28), num_classes=10, criterion="magnitude")


RELOAD = """
import sys, torch
from compressor.models import checkpoint
ck = torch.load(sys.argv[1], weights_only=True)
model, _ = checkpoint.load_model(sys.argv[1])
x = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    torch.save(model(x), sys.argv[3])
print(sum(p.numel() for p in model.parameters()))
"""


def test_grown_wrn_student_end_to_end(teacher_ckpt, tmp_path):
    """--student-size 0.25 from a WRN-16-2 teacher: pruned (init auto), parity, reload in a fresh process with
    weights_only=True, `compress export` of student.pt computes what student.onnx computes, --resume rebuilds it."""
    out = tmp_path / "run"
    r = run_cli_here("distill", teacher_ckpt, "--recipe", RECIPE, "--out", out, "--student-size", "0.25", *sets(*FAST))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "report.json").read_text())
    s, t, sizing = report["student"], report["teacher"], report["student"]["sizing"]
    assert sizing["init"] == "teacher" and sizing["how"] == "pruned" and sizing["criterion"] == "taylor"
    assert s["params"] == sizing["params"] <= 0.25 * t["params"] and s["flops"] == sizing["flops"] < t["flops"]
    assert s["arch"] == "wrn-16-2-pruned" and 0 <= sizing["accuracy_after_pruning"] <= 100
    assert [(p["teacher"], p["student"], p["teacher_shape"][1:] == p["shape"][1:])
            for p in report["distillation"]["pairs"]] == [(g, g, True) for g in ("group0", "group1", "group2")]
    assert report["export"]["max_abs_diff"] < 1e-4 and s["accuracy"] == s["onnx_accuracy"]
    md = (out / "report.md").read_text()
    assert f"{sizing['accuracy_after_pruning']:.2f}%" in md and "after pruning" in md
    assert "student grown from the teacher" in " ".join(r.stderr.split())

    # a fresh process rebuilds it from plain data
    x = real_images(16)
    torch.save(x, tmp_path / "x.pt")
    p = subprocess.run([sys.executable, "-c", RELOAD, out / "student.pt", tmp_path / "x.pt", tmp_path / "y.pt"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert int(p.stdout.strip()) == s["params"]
    model, _ = ckpt_io.load_model(out / "student.pt")
    assert_same_function(out / "student.onnx", model)
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "y.pt", weights_only=True), model(x))

    # compress export of student.pt: the same function as the student.onnx distill wrote
    r = run_cli_here("export", out / "student.pt", "--out", tmp_path / "again.onnx")
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_function(tmp_path / "again.onnx", model)

    # --resume with more epochs rebuilds the same pruned student from the saved plan and trains on
    r = run_cli_here("distill", teacher_ckpt, "--recipe", RECIPE, "--out", out, "--student-size", "0.25", "--resume",
                *sets(*FAST, "train.epochs=2"))
    assert r.returncode == 0, r.stdout + r.stderr
    again = json.loads((out / "report.json").read_text())
    assert again["distillation"]["resumed_from_epoch"] == 2 and len(again["distillation"]["history"]) == 2
    assert again["student"]["params"] == s["params"] and again["student"]["sizing"] == sizing
    assert "student grown from the teacher" not in " ".join(r.stderr.split())  # not pruned again


def test_init_teacher_refuses_a_teacher_it_cannot_rebuild(teacher_ckpt, tmp_path, cli):
    model, _ = ckpt_io.load_model(teacher_ckpt)
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(model), tmp_path / "teacher.ts")
    r = cli("distill", tmp_path / "teacher.ts", "--recipe", RECIPE, "--out", tmp_path / "run", "--student-size", "0.25",
            *sets(*FAST, "student.init=teacher"))
    assert r.exit_code == 2
    assert "student.init: teacher: cannot grow the student from the teacher: the teacher is a TorchScript" in " ".join(r.output.split())
    assert not (tmp_path / "run" / "student.pt").exists()


def test_recipe_refuses_init_teacher_with_a_named_architecture(cli):
    r = cli("recipe", "validate", RECIPE, "--set", "student.init=teacher")
    assert r.exit_code == 2 and "student.init: teacher prunes the teacher down to student.size" in " ".join(r.output.split())


@pytest.mark.slow
def test_torchvision_resnet18_state_dict_on_rgb_imagefolder(tmp_path):
    """A torchvision ResNet-18 (11.2M parameters) given as a state_dict, on 3-channel ImageFolder images."""
    write_imagefolder(tmp_path / "folder")
    torch.manual_seed(0)
    teacher = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(teacher.state_dict(), tmp_path / "resnet18.pt")
    out = tmp_path / "run"
    data = ("data.name=imagefolder", f"data.root={tmp_path / 'folder'}", "data.image_size=32", "data.channels=3",
            "data.pad=2", "verify.batch_sizes=[1]", "teacher.arch=resnet18", "student.init=teacher",
            "student.calibration_images=128", "train.lr=0.01", "distill.at.beta=100")  # a fine-tuning step size
    r = run_cli_here("distill", tmp_path / "resnet18.pt", "--recipe", RECIPE, "--out", out, "--student-size", "0.25",
                *sets(*data))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "report.json").read_text())
    s, t = report["student"], report["teacher"]
    assert s["sizing"]["init"] == "teacher" and s["params"] <= 0.25 * t["params"] == 0.25 * count_params(teacher)
    assert [p["teacher"] for p in report["distillation"]["pairs"]] == [p["student"] for p in report["distillation"]["pairs"]]
    assert report["export"]["max_abs_diff"] < 1e-4
    model, ck = ckpt_io.load_model(out / "student.pt")
    assert ck["arch"] == "resnet18" and ck["input_shape"] == [3, 32, 32]
    assert_same_function(out / "student.onnx", model, shape=(3, 32, 32))


def test_timm_teacher_grows_a_student(tmp_path):
    timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install 'compressor[timm]'")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1).eval()
    torch.save(model.state_dict(), tmp_path / "timm_resnet.pt")
    out = tmp_path / "run"
    r = run_cli_here("distill", tmp_path / "timm_resnet.pt", "--recipe", RECIPE, "--out", out, "--student-size", "0.25",
                *sets(*FAST, "teacher.arch=timm:test_resnet", "student.init=teacher"))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["sizing"]["init"] == "teacher" and report["student"]["arch"] == "timm:test_resnet-pruned"
    assert report["student"]["params"] <= 0.25 * report["teacher"]["params"]
    # one-to-one by name: act1 (14x14) too, which a scratch ResNet student has no point for; layer4 is 1x1
    assert [(p["teacher"], p["student"]) for p in report["distillation"]["pairs"]] == [
        ("act1", "act1"), ("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3")]
    student, _ = ckpt_io.load_model(out / "student.pt")
    assert_same_function(out / "student.onnx", student)


def test_pruned_widths_train_in_nchw_on_the_cpu():
    """channels_last is kept for widths that are multiples of 8 and dropped for a pruned student's odd ones (a
    PyTorch CPU kernel crashes on some of them in channels_last: device.channels_last_safe)."""
    from compressor.core.device import channels_last_safe

    assert channels_last_safe(create_model("wrn-16-1", 10, 1)) and channels_last_safe(create_model("wrn-16-2", 10, 3))
    student, _ = grow_student(wrn16_2(), 172_846, input_shape=(1, 28, 28), num_classes=10, criterion="magnitude")
    assert not channels_last_safe(student)
    student.train()  # a last partial batch of 115 images through forward and backward, in the format fit() picks
    torch.nn.functional.cross_entropy(student(torch.randn(115, 1, 28, 28)), torch.zeros(115, dtype=torch.long)).backward()


@pytest.mark.e2e  # trains or grows real models: tens of seconds on 2 cores
def test_a_flops_target_alone_or_with_a_parameter_target():
    from compressor.models.measure import count_flops

    teacher = wrn16_2()
    flops = count_flops(teacher, (1, 28, 28))
    by_flops, info = grow_student(teacher, None, target_flops=int(0.3 * flops), input_shape=(1, 28, 28),
                                  num_classes=10, criterion="magnitude")
    assert 0.25 * flops <= count_flops(by_flops, (1, 28, 28)) <= 0.3 * flops and info["target_flops"] == int(0.3 * flops)
    both, _ = grow_student(teacher, int(0.1 * count_params(teacher)), target_flops=int(0.3 * flops),
                           input_shape=(1, 28, 28), num_classes=10, criterion="magnitude")
    assert count_params(both) <= 0.1 * count_params(teacher) and count_params(both) < count_params(by_flops)


def test_student_flops_in_the_recipe():
    from compressor.recipe.load import load_recipe

    r = load_recipe(RECIPE, ["student.arch=null", "student.flops=40M"])
    assert r.student.flops == "40M" and r.student.size is None
    for bad, message in ((["student.flops=0.3"], "set either student.arch or student.size / student.flops"),
                         (["student.arch=null", "student.flops=12x"], "neither a fraction (0.25) nor a FLOPs count"),
                         (["student.arch=null", "student.flops=0.3", "student.init=scratch"], "student.flops sizes a student grown")):
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_recipe(RECIPE, bad)


def test_student_sizes_at_the_edges(small_teacher, tmp_path, cli):
    """--student-size 1.0 is the teacher itself: refused by the recipe's own rule, which says (0, 1), not (0, 1];
    0.99 removes a little, and the line says how much (it said "0% of all channels removed")."""
    r = cli("distill", small_teacher, "--recipe", RECIPE, "--student-size", "1.0", "--out", tmp_path / "a")
    assert r.exit_code == 2
    assert "student.size: a fraction must be in (0, 1) (1 is the teacher itself)" in r.output
    r = cli("distill", small_teacher, "--recipe", RECIPE, "--student-size", "0.99", "--out", tmp_path / "b",
            *sets(*FAST, "data.limit_train=64", "device=cpu"))
    assert r.exit_code in (0, 1), r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("student grown from the teacher"))
    removed = float(line.split("importance, ")[1].split("%")[0])
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert 0 < removed < 5 and removed == round(100 * report["student"]["sizing"]["channels_removed"], 1)
