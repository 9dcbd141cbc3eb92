"""Attention points: `compress inspect` on every model format, discovery without feature_info, explicit pairs."""

import subprocess
import sys

import pytest
import torch
import torchvision

from compressor.core.errors import UserError
from compressor.distill.pairs import pair_explicit
from compressor.distill.points import all_points, candidate_points
from compressor.models import create_model
from compressor.recipe.schema import PairSpec

from .conftest import RECIPE, sets

RESNET18_STAGES_64 = [("layer1", "(64, 16, 16)", "4"), ("layer2", "(128, 8, 8)", "8"),
                      ("layer3", "(256, 4, 4)", "16"), ("layer4", "(512, 2, 2)", "32")]


def rows(output: str) -> list[tuple[str, ...]]:
    """The table's rows: (module, output shape, stride)."""
    out = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 3:
            out.append(tuple(cells))
    return out


def test_inspect_wrn_16_2_lists_the_three_group_outputs(cli):
    r = cli("inspect", "wrn-16-2", "--input-shape", "1,28,28")
    assert r.exit_code == 0, r.output
    assert rows(r.output) == [("group0", "(32, 28, 28)", "1"), ("group1", "(64, 14, 14)", "2"),
                              ("group2", "(128, 7, 7)", "4")]


def test_inspect_a_checkpoint_uses_its_input_shape(cli, teacher_ckpt):
    r = cli("inspect", teacher_ckpt)
    assert r.exit_code == 0, r.output
    assert "wrn-16-2 (compressor checkpoint), input 1x28x28" in " ".join(r.output.split())
    assert [row[:2] for row in rows(r.output)] == [("group0", "(32, 28, 28)"), ("group1", "(64, 14, 14)"),
                                                   ("group2", "(128, 7, 7)")]


def test_inspect_torchvision_resnet18_lists_the_four_stages(cli, tmp_path):
    r = cli("inspect", "resnet18", "--input-shape", "3,64,64")
    assert r.exit_code == 0, r.output
    assert rows(r.output) == RESNET18_STAGES_64

    # the same network as a user holds it: a state_dict, a TorchScript archive, a torch.export program; the
    # latter two have no feature_info: their stages are found by the dry forward (plus the stride-2 stem)
    model = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(model.state_dict(), tmp_path / "resnet18.pt")
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(model), tmp_path / "resnet18.ts")
    program = torch.export.export(model, (torch.zeros(2, 3, 64, 64),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "resnet18.pt2")
    for name, args in (("resnet18.pt", ("--arch", "resnet18", "--input-shape", "3,64,64")),
                       ("resnet18.ts", ("--input-shape", "3,64,64")),
                       ("resnet18.pt2", ())):  # the program records its input shape
        r = cli("inspect", tmp_path / name, *args)
        assert r.exit_code == 0, (name, r.output)
        found = rows(r.output)
        assert found[-4:] == RESNET18_STAGES_64, (name, found)
        assert found[:-4] in ([], [("relu", "(64, 32, 32)", "2")]), (name, found)


def test_inspect_all_lists_every_module_with_a_4d_output(cli):
    r = cli("inspect", "resnet18", "--input-shape", "3,64,64", "--all")
    assert r.exit_code == 0, r.output
    modules = [row[0] for row in rows(r.output)]
    assert {"conv1", "maxpool", "layer1.0.conv1", "layer1.0", "layer1", "layer4.1.bn2", "layer4"} <= set(modules)
    assert "fc" not in modules and "avgpool" in modules  # (N, 512, 1, 1) is 4-D; the logits are not


def test_inspect_rejects_what_it_cannot_open(cli, tmp_path):
    r = cli("inspect", "resnet19")
    assert r.exit_code == 2 and "resnet19" in r.output
    r = cli("inspect", "wrn-16-2", "--input-shape", "28x28")
    assert r.exit_code == 2 and "--input-shape" in r.output
    # a shape of the wrong rank or with a zero is refused too, also under `python -O` (which drops asserts)
    for bad in ("1,28", "0,28,28"):
        r = subprocess.run([sys.executable, "-O", "-m", "compressor", "inspect", "wrn-16-2", "--input-shape", bad],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Invalid value for '--input-shape': expected C,H,W" in r.stderr, (bad, r.stderr)


def test_discovery_finds_the_declared_stages():
    """Without feature_info, one dry forward finds the same stage outputs the registry declares."""
    for arch, shape in (("wrn-16-2", (1, 28, 28)), ("resnet34", (3, 64, 64))):
        model = create_model(arch, 10, shape[0])
        declared = [p.module for p in candidate_points(model, shape)]
        del model.feature_info
        found = [p.module for p in candidate_points(model, shape)]
        assert found[-len(declared):] == declared and len(found) - len(declared) <= 1, (arch, found)


def test_discovery_on_a_model_without_feature_info():
    model = create_model("mobilenet_v3_small", 10, 1)  # registered from torchvision, no feature_info
    points = candidate_points(model, (1, 64, 64))
    sizes = [p.shape[1] for p in points]
    assert sizes == sorted(set(sizes), reverse=True) and len(points) >= 4  # one stage per resolution, shrinking
    modules = dict(model.named_modules())
    assert all(next(modules[p.module].children(), None) is not None for p in points)  # stages, not single layers


def test_explicit_pairs_match_paths_with_wildcards():
    shape = (3, 64, 64)
    t, s = all_points(create_model("resnet34", 10, 3), shape), all_points(create_model("resnet18", 10, 3), shape)
    pairs = pair_explicit([PairSpec(teacher="layer*", student="layer*")], t, s)
    assert [(p.teacher.module, p.student.module) for p in pairs] == [(f"layer{i}", f"layer{i}") for i in range(1, 5)]
    pairs = pair_explicit([PairSpec(teacher="layer3.5", student="layer3.1.bn2")], t, s)  # any module with a 4-D output
    assert [(p.teacher.module, p.student.module, p.teacher.shape) for p in pairs] == [
        ("layer3.5", "layer3.1.bn2", (256, 4, 4))]
    assert pairs[0].name == "layer3.1.bn2"  # terms are named after the student point: at.layer3.1.bn2
    with pytest.raises(UserError, match="'layer9' matches no module with a 4-D output; valid: conv1, bn1, relu"):
        pair_explicit([PairSpec(teacher="layer9", student="layer1")], t, s)


def test_a_pair_that_matches_nothing_fails_with_the_valid_paths(cli, teacher_ckpt, tmp_path):
    r = cli("distill", teacher_ckpt, "--recipe", RECIPE, "--out", tmp_path / "run",
            *sets("data.limit_train=64", "distill.at.pairs=[{teacher: group9, student: group0}]"))
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "teacher point 'group9' matches no module with a 4-D output; valid: conv0, group0.0.bn0" in text
    assert "group2" in text and "Traceback" not in text and not (tmp_path / "run" / "report.json").exists()
