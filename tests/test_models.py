"""The model registry and the attention points every model describes."""

import pytest
import torch

from compressor.core.errors import UserError
from compressor.distill.pairs import pair_auto
from compressor.distill.points import probe_points
from compressor.models import create_model


def params(m):
    return sum(p.numel() for p in m.parameters())


def test_wrn_sizes_match_the_paper():
    # Table 1 of the paper: WRN-16-1 0.2M, WRN-16-2 0.7M (CIFAR, 3 input channels)
    assert round(params(create_model("wrn-16-1", 10, 3)) / 1e6, 1) == 0.2
    assert round(params(create_model("wrn-16-2", 10, 3)) / 1e6, 1) == 0.7


def test_wrn_attention_points_are_the_group_outputs():
    m = create_model("wrn-16-2", 10, 1)
    points = probe_points(m, (1, 28, 28))
    assert [(p.module, p.shape, p.stride) for p in points] == [
        ("group0", (32, 28, 28), 1), ("group1", (64, 14, 14), 2), ("group2", (128, 7, 7), 4)]


def test_resnet_points_and_auto_pairing():
    t, s = create_model("resnet34", 10, 3), create_model("resnet18", 10, 3)
    tp, sp = probe_points(t, (3, 64, 64)), probe_points(s, (3, 64, 64))
    assert [p.module for p in tp] == ["layer1", "layer2", "layer3", "layer4"]
    pairs = pair_auto(tp, sp)
    assert [(p.teacher.module, p.student.module) for p in pairs] == [(f"layer{i}", f"layer{i}") for i in range(1, 5)]


def test_unknown_model_fails_with_a_suggestion():
    with pytest.raises(UserError, match="did you mean"):
        create_model("resnet19", 10, 3)
    with pytest.raises(UserError, match="depth must be 6n\\+4"):
        create_model("wrn-15-2", 10, 3)


def test_models_run_on_grey_scale_input():
    for name in ("wrn-10-1", "resnet18", "resnet18-w0.25"):
        assert create_model(name, 7, 1)(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
