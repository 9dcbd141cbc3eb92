"""Teachers the user already has: a torchvision ResNet state_dict, TorchScript, torch.export, timm, pickles.

Each distillation runs through the real CLI on a real Fashion-MNIST subset; the report must list the
automatically paired attention points, and the teacher compressor used must compute what the user's did
(its teacher.onnx is compared with the user's model on real images). The distillation from a torchvision
ResNet state_dict is test_sizing's ResNet-34 run.
"""

import json
import pickle
import zipfile

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn

from compressor.core.errors import UserError
from compressor.data.transform import Normalize
from compressor.data.datasets import load_data
from compressor.models.checkpoint import load_model
from compressor.recipe.load import load_recipe
from compressor.teachers.load import open_model

from .conftest import RECIPE, run_cli_here, sets

# limit_test stays 300 (the teacher_ckpt's test split); a gentle lr: a few steps under an untrained teacher's
# attention maps must not blow the student's logits up (parity is checked in absolute terms)
FAST = ("data.limit_train=256", "verify.batch_sizes=[1]", "train.lr=0.01")


def distil(teacher, out, *overrides, args=()):
    r = run_cli_here("distill", teacher, "--recipe", RECIPE, "--out", out, *args, *sets(*FAST, *overrides))
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads((out / "report.json").read_text()), r


def real_images(n=64) -> torch.Tensor:
    """Real Fashion-MNIST test images, normalised as the recipe normalises them: (n, 1, 28, 28)."""
    data = load_data(load_recipe(RECIPE, [f"data.limit_test={n}", "data.limit_train=64"]).data)
    return Normalize(data.mean, data.std, torch.device("cpu"))(data.test.images)


def assert_same_function(onnx_path, model: nn.Module, atol=1e-4, shape=None):
    """The teacher.onnx compressor exported from the loaded teacher computes what the user's model does
    (on real Fashion-MNIST images, or seeded random inputs of another `shape`)."""
    x = real_images() if shape is None else torch.randn(16, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=atol, rtol=1e-4)


def grey_resnet18() -> nn.Module:
    """A torchvision ResNet-18 as a user adapts it to grey-scale images (seeded: the test is reproducible)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model.eval()


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model"])
def test_torchvision_resnet_state_dict_loads_as_it_was_saved(tmp_path, wrap):
    """The distillation from a torchvision ResNet state_dict runs in test_sizing (ResNet-34, --student-size)."""
    model = grey_resnet18()
    state = model.state_dict()
    torch.save(state if wrap == "plain" else {wrap: state, "epoch": 90}, tmp_path / "resnet18.pt")
    teacher = open_model(tmp_path / "resnet18.pt", arch="resnet18")
    assert (teacher.source, teacher.input_shape[0], teacher.num_classes) == ("state_dict", 1, 10)
    x = real_images(8)
    with torch.no_grad():
        assert torch.equal(teacher.model(x), model(x))
    with pytest.raises(UserError, match="name its architecture"):
        open_model(tmp_path / "resnet18.pt")
    with pytest.raises(UserError, match="weights do not fit teacher.arch=resnet34: missing"):
        open_model(tmp_path / "resnet18.pt", arch="resnet34")


def wrn_teacher(teacher_ckpt) -> tuple[nn.Module, dict]:
    model, ck = load_model(teacher_ckpt)
    return model.eval(), ck


def test_torchscript_teacher(teacher_ckpt, tmp_path):
    model, ck = wrn_teacher(teacher_ckpt)
    with pytest.warns(FutureWarning):  # torch.jit is deprecated, which is why torch.export is supported too
        torch.jit.save(torch.jit.script(model), tmp_path / "teacher.ts")
    report, r = distil(tmp_path / "teacher.ts", tmp_path / "run", "student.arch=wrn-10-1")
    assert report["teacher"]["source"] == "TorchScript" and report["teacher"]["arch"] == "torchscript:WideResNet"
    # the three group outputs, found in the TorchScript graph under the original module paths
    assert [(p["teacher"], p["student"], p["teacher_shape"]) for p in report["distillation"]["pairs"]] == [
        ("group0", "group0", [32, 28, 28]), ("group1", "group1", [64, 14, 14]), ("group2", "group2", [128, 7, 7])]
    assert "attention pair: teacher group0" in r.stderr
    # the same weights: the same test accuracy as the checkpoint it was scripted from, in PyTorch and onnxruntime
    assert report["teacher"]["accuracy"] == ck["metrics"]["test_accuracy"] == report["teacher"]["onnx_accuracy"]
    assert report["teacher"]["params"] == sum(p.numel() for p in model.parameters())
    assert_same_function(tmp_path / "run" / "teacher.onnx", model)


def export_program(model: nn.Module, path, batch=None) -> None:
    example = (torch.randn(2, 1, 28, 28),)
    dynamic = None if batch else ({0: torch.export.Dim("batch")},)
    torch.export.save(torch.export.export(model, example if not batch else (torch.randn(batch, 1, 28, 28),),
                                          dynamic_shapes=dynamic), path)


def test_exported_program_teacher_sized_to_a_quarter(teacher_ckpt, tmp_path):
    """Also --student-size 0.25 on a WRN-16-2 teacher (one distillation checks both; test_sizing has the rest)."""
    model, ck = wrn_teacher(teacher_ckpt)
    export_program(model, tmp_path / "teacher.pt2")
    report, r = distil(tmp_path / "teacher.pt2", tmp_path / "run", args=("--student-size", "0.25"))
    assert report["teacher"]["source"] == "torch.export" and report["teacher"]["arch"] == "torch.export:WideResNet"
    assert [(p["teacher"], p["student"]) for p in report["distillation"]["pairs"]] == [
        ("group0", "group0"), ("group1", "group1"), ("group2", "group2")]
    sizing = report["student"]["sizing"]
    assert sizing["family"] == "wrn" and sizing["arch"].startswith("wrn-") and report["student"]["arch"] == sizing["arch"]
    assert report["student"]["params"] == sizing["params"] <= 0.25 * report["teacher"]["params"]
    assert report["teacher"]["params"] == sum(p.numel() for p in model.parameters())  # WRN-16-2: 691k on 1 channel
    assert report["student"]["flops"] == sizing["flops"] and sizing["target"] == "0.25"
    assert f"student size 0.25: {sizing['reason']}" in " ".join(r.stderr.split())
    # a torch.export program cannot be the base of a pruned student: init auto says why and sizes one from scratch
    assert sizing["init"] == "scratch" and "torch.export" in sizing["why_scratch"]
    assert "student.init auto: a scratch student, because the teacher is a torch.export" in " ".join(r.stderr.split())
    assert report["teacher"]["accuracy"] == ck["metrics"]["test_accuracy"] == report["teacher"]["onnx_accuracy"]
    assert_same_function(tmp_path / "run" / "teacher.onnx", model)


@pytest.mark.e2e  # trains or grows real models: tens of seconds on 2 cores
def test_timm_teacher(tmp_path):
    timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install 'compressor[timm]'")
    torch.manual_seed(0)
    # timm's own small ResNet (0.4M parameters): a timm model, quick to distil and export
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1).eval()
    torch.save(model.state_dict(), tmp_path / "timm_resnet.pt")
    report, _ = distil(tmp_path / "timm_resnet.pt", tmp_path / "run", "teacher.arch=timm:test_resnet",
                       "student.arch=resnet18-w0.125")
    assert report["teacher"]["arch"] == "timm:test_resnet" and report["teacher"]["source"] == "state_dict"
    # timm's feature_info: act1 (14x14, no student point there), layer1..layer3; layer4 is 1x1
    assert [(p["teacher"], p["student"]) for p in report["distillation"]["pairs"]] == [
        ("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3")]
    assert_same_function(tmp_path / "run" / "teacher.onnx", model)


def test_export_accepts_teacher_formats(cli, teacher_ckpt, tmp_path):
    model, _ = wrn_teacher(teacher_ckpt)
    export_program(model, tmp_path / "teacher.pt2")
    r = cli("export", tmp_path / "teacher.pt2", "--out", tmp_path / "teacher.onnx")  # the program has its shape
    assert r.exit_code == 0, r.output
    assert_same_function(tmp_path / "teacher.onnx", model)
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(model), tmp_path / "teacher.ts")
    r = cli("export", tmp_path / "teacher.ts", "--out", tmp_path / "ts.onnx")  # TorchScript does not record it
    assert r.exit_code == 2 and "give --input-shape C,H,W" in r.output and not (tmp_path / "ts.onnx").exists()


class Exploit:
    """Unpickling this runs code: it creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_crafted_pickle_is_refused_by_default(cli, tmp_path, writer):
    marker, evil = tmp_path / "MARKER", tmp_path / "teacher.pt"
    if writer == "torch.save":
        torch.save(Exploit(marker), evil)
    else:
        evil.write_bytes(pickle.dumps(Exploit(marker)))
    runs = {
        "distill": cli("distill", evil, "--recipe", RECIPE, "--out", tmp_path / "run", *sets(*FAST)),
        "inspect": cli("inspect", evil),
        "export": cli("export", evil, "--out", tmp_path / "t.onnx", "--input-shape", "1,28,28"),
    }
    for name, r in runs.items():
        assert r.exit_code == 2, (name, r.output)
        assert "--trust-teacher" in r.output and "Traceback" not in r.output, (name, r.output)
    assert not marker.exists()
    assert not (tmp_path / "run" / "report.json").exists() and not (tmp_path / "t.onnx").exists()


def test_exported_program_with_a_pickled_payload_is_refused(cli, teacher_ckpt, tmp_path):
    """torch.export.load unpickles a payload marked use_pickle with weights_only=False: compressor must not."""
    model, _ = wrn_teacher(teacher_ckpt)
    export_program(model, tmp_path / "good.pt2")
    evil, marker = tmp_path / "evil.pt2", tmp_path / "MARKER"
    with zipfile.ZipFile(tmp_path / "good.pt2") as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    config_name = next(n for n in members if n.endswith("weights/model_weights_config.json"))
    config = json.loads(members[config_name])
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True  # the first weight is now "a pickled object" ...
    members[config_name] = json.dumps(config).encode()
    weight_name = next(n for n in members if n.endswith(f"weights/{first['path_name']}"))
    members[weight_name] = pickle.dumps(Exploit(marker))  # ... that runs code when unpickled
    with zipfile.ZipFile(evil, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    for command in (("inspect", evil), ("distill", evil, "--recipe", RECIPE, "--out", tmp_path / "run", *sets(*FAST))):
        r = cli(*command)
        assert r.exit_code == 2 and "--trust-teacher" in r.output, r.output
    assert not marker.exists()
    with pytest.raises(RuntimeError):  # the threat is real: torch's own loader runs the payload
        torch.export.load(evil)
    assert marker.exists()


def test_pickled_module_loads_with_trust_teacher(cli, tmp_path):
    torch.save(grey_resnet18(), tmp_path / "module.pt")  # a whole nn.Module, pickled
    refused = cli("inspect", tmp_path / "module.pt")
    assert refused.exit_code == 2 and "--trust-teacher" in refused.output
    r = cli("inspect", tmp_path / "module.pt", "--trust-teacher", "--input-shape", "1,32,32")
    assert r.exit_code == 0, r.output
    assert "ResNet (pickled module)" in r.output
    for stage, shape in (("layer1", "(64, 8, 8)"), ("layer2", "(128, 4, 4)"), ("layer3", "(256, 2, 2)")):
        assert any(stage in line and shape in line for line in r.output.splitlines()), stage


def test_class_and_channel_mismatch_names_both_values(cli, tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "imagenet_resnet18.pt")  # 1000 classes, RGB
    r = cli("distill", tmp_path / "imagenet_resnet18.pt", "--recipe", RECIPE, "--out", tmp_path / "run",
            *sets(*FAST, "teacher.arch=resnet18"))
    assert r.exit_code == 2, r.output
    assert "the teacher has 1000 classes, the data has 10" in r.output
    assert "the teacher takes 3 input channels, the data has 1" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "run" / "report.json").exists()


def test_programs_that_cannot_teach_are_refused(cli, teacher_ckpt, tmp_path):
    model, _ = wrn_teacher(teacher_ckpt)
    export_program(model, tmp_path / "fixed_batch.pt2", batch=4)
    r = cli("inspect", tmp_path / "fixed_batch.pt2")
    assert r.exit_code == 2 and "batches of exactly 4" in r.output and "Dim('batch')" in r.output, r.output
    export_program(model.train(), tmp_path / "training.pt2")
    r = cli("inspect", tmp_path / "training.pt2")
    assert r.exit_code == 2 and "exported in training mode" in r.output and "model.eval()" in r.output, r.output
