"""End to end through the real CLI on a real Fashion-MNIST subset: train a teacher, distil, export, verify."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import torch

from compressor.models.checkpoint import load_model
from compressor.report.models import DistillReport

from .conftest import RECIPE, run_cli, run_cli_here, sets

# the contract's report.json keys (../shared/CONTRACT.md): the typed report must carry every one of them
CONTRACT = {
    "passed": None, "teacher": {"arch", "params", "flops", "accuracy", "onnx_accuracy"},
    "student": {"arch", "params", "flops", "accuracy", "onnx_accuracy"},
    "distillation": {"methods", "pairs", "epochs", "train_seconds", "images_per_second"},
    "export": {"path", "opset", "max_abs_diff", "dynamic_batch"},
    "latency": {"provider", "threads", "teacher", "student", "speedup"}, "gates": None,
    "environment": {"python", "torch", "onnx", "onnxruntime", "device", "cpu"},
}


def test_the_report_model_carries_the_contract():
    fields = DistillReport.model_fields
    for key, sub in CONTRACT.items():
        assert key in fields, key
        if sub:
            assert sub <= set(fields[key].annotation.model_fields), (key, sub)


def test_help_lists_the_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("train", "distill", "export", "verify", "inspect", "recipe"):
        assert cmd in r.stdout


def test_teacher_checkpoint_is_self_describing(teacher_ckpt):
    ck = torch.load(teacher_ckpt, weights_only=True)
    assert ck["arch"] == "wrn-16-2" and ck["num_classes"] == 10 and ck["input_shape"] == [1, 28, 28]
    assert ck["classes"][0] == "T-shirt/top" and len(ck["mean"]) == 1
    model, _ = load_model(teacher_ckpt)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # nine SGD steps on 1,152 images already learn something (chance is 10%)
    assert ck["metrics"]["test_accuracy"] > 20.0


def test_distill_end_to_end(teacher_ckpt, tmp_path):
    out = tmp_path / "run"
    r = run_cli("distill", teacher_ckpt, "--recipe", RECIPE, "--out", out, *sets("verify.batch_sizes=[1,3]"))
    assert r.returncode == 0, r.stderr
    for name in ("student.pt", "student.onnx", "teacher.onnx", "report.json", "report.md", "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.onnx.data")) and not list(out.glob(".*.tmp"))

    report = json.loads((out / "report.json").read_text())
    # report.json is the typed report, field for field, and validates against the published JSON Schema
    typed = DistillReport.model_validate(report)
    assert typed.model_dump(mode="json") == report
    import jsonschema

    schema = run_cli("report", "schema", "distill")
    assert schema.returncode == 0
    jsonschema.validate(report, json.loads(schema.stdout))
    assert typed.distillation.methods == ["kd", "at"]
    assert [p.student for p in typed.distillation.pairs] == ["group0", "group1", "group2"]
    assert typed.distillation.pairs[0].shape == [16, 28, 28]
    assert typed.student.params < typed.teacher.params / 3
    assert typed.export.max_abs_diff <= 1e-4
    assert abs(typed.student.accuracy - typed.student.onnx_accuracy) <= 0.1
    assert set(typed.latency.student) == {"1", "3"}
    assert {g.name for g in typed.gates} >= {"max_abs_diff", "onnx_accuracy_agreement"}
    assert typed.passed is True

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and {"kd", "ce", "at.group0", "at.group1", "at.group2", "total"} <= set(rows[0]["train_loss"])

    # the ONNX student runs at any batch size and carries its classes
    model = onnx.load(out / "student.onnx")
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["compressor.classes"])[9] == "Ankle boot"
    assert json.loads(meta["compressor.preprocess"]) == {"size": [28, 28], "channels": 1, "scale": 1 / 255,
                                                         "mean": typed.data.mean, "std": typed.data.std}
    assert typed.data.preprocess == json.loads(meta["compressor.preprocess"])  # one record, written twice
    # `compress export` of the student checkpoint writes the very metadata distill wrote (from the checkpoint)
    exported = tmp_path / "again.onnx"
    r = run_cli("export", out / "student.pt", "--out", exported)
    assert r.returncode == 0, r.stderr
    assert {p.key: p.value for p in onnx.load(exported).metadata_props} == meta
    sess = ort.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    for b in (1, 3, 17):
        assert sess.run(None, {"input": np.zeros((b, 1, 28, 28), np.float32)})[0].shape == (b, 10)

    # the student checkpoint loads safely and reproduces the reported PyTorch accuracy's predictions
    student, ck = load_model(out / "student.pt")
    assert ck["arch"] == "wrn-16-1" and ck["teacher"]["arch"] == "wrn-16-2"
    assert "FLOPs" in (out / "report.md").read_text()

    # a finished run is not overwritten without --force
    again = run_cli_here("distill", teacher_ckpt, "--recipe", RECIPE, "--out", out, *sets())
    assert again.returncode == 2 and "--force" in again.stderr
    assert json.loads((out / "report.json").read_text()) == report


def test_impossible_gate_exits_1_with_artifacts(teacher_ckpt, tmp_path):
    out = tmp_path / "gated"
    r = run_cli_here("distill", teacher_ckpt, "--recipe", RECIPE, "--out", out,
                *sets("verify.min_speedup=1000", "distill.at.enabled=false"))
    assert r.returncode == 1, r.stderr
    assert "gate min_speedup failed" in r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False
    failed = [g for g in report["gates"] if not g["passed"]]
    assert [g["name"] for g in failed] == ["min_speedup"] and failed[0]["limit"] == 1000
    assert report["distillation"]["methods"] == ["kd"] and report["distillation"]["pairs"] == []
    for name in ("student.pt", "student.onnx", "report.md"):
        assert (out / name).is_file()
