"""The teacher's export and ONNX accuracy are reused by the next run in the process only when nothing they depend
on changed: the same weights, data (and the seed that draws a limited test subset) and export settings."""

from __future__ import annotations

import pytest
import torch

from compressor.data.datasets import load_data
from compressor.models import create_model
from compressor.recipe.load import load_recipe
from compressor.verify import student as verify_student

from .conftest import RECIPE


@pytest.mark.e2e  # three real ONNX exports: ~4 s each
def test_the_teachers_export_is_reused_only_for_the_same_teacher_data_and_seed(tmp_path):
    recipe = load_recipe(RECIPE, ["data.limit_test=50", "data.limit_train=64"])
    data = load_data(recipe.data, recipe.seed)
    torch.manual_seed(0)
    teacher = create_model("wrn-10-1", num_classes=10, in_channels=1).eval()
    measured: list[str] = []

    def accuracy(path):
        measured.append(path.name)
        return 12.5

    def run(name, model=teacher, r=recipe, d=data) -> float:
        return verify_student._export_teacher(model, "wrn-10-1", d, r, tmp_path / name, accuracy)

    assert run("a.onnx") == 12.5 and measured == ["a.onnx"]
    assert run("b.onnx") == 12.5 and measured == ["a.onnx"]  # reused: same bytes, not measured again
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()

    other_seed = recipe.model_copy(update={"seed": 1})  # limit_test draws another subset
    run("c.onnx", r=other_seed, d=load_data(other_seed.data, 1))
    assert measured == ["a.onnx", "c.onnx"]

    changed = create_model("wrn-10-1", num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        changed.load_state_dict(teacher.state_dict())
        next(changed.parameters()).add_(1e-3)  # one weight moved: another teacher
    run("d.onnx", model=changed)
    assert measured == ["a.onnx", "c.onnx", "d.onnx"]
