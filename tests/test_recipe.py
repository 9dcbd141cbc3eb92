"""Recipes: shipped ones validate, overrides work, every problem is reported at once with exit 2."""

import json
from pathlib import Path

import pytest

from compressor import load_recipe
from compressor.errors import UserError

from .conftest import ROOT


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path, cli):
    r = cli("recipe", "validate", path)
    assert r.exit_code == 0, r.output
    assert load_recipe(path).name == path.stem


def test_overrides_are_parsed_as_yaml():
    r = load_recipe(ROOT / "recipes/fashion_at.yaml", ["train.epochs=7", "verify.batch_sizes=[1, 8]",
                                                       "data.limit_train=null", "distill.at.beta=500"])
    assert r.train.epochs == 7 and r.verify.batch_sizes == [1, 8]
    assert r.data.limit_train is None and r.distill.at.beta == 500.0


def test_amp_off_reads_as_off_although_yaml_reads_it_as_false(tmp_path):
    recipe = ROOT / "recipes/fashion_at.yaml"
    assert load_recipe(recipe, ["train.amp=off"]).train.amp == "off"  # YAML 1.1: off -> False
    assert load_recipe(recipe, ["train.amp=bf16"]).train.amp == "bf16"
    written = tmp_path / "r.yaml"
    written.write_text(recipe.read_text().replace("train:\n", "train:\n  amp: off\n", 1))
    assert load_recipe(written).train.amp == "off"
    with pytest.raises(UserError, match="train.amp"):
        load_recipe(recipe, ["train.amp=fp8"])


def test_compile_with_gradient_at_is_refused():
    recipe = ROOT / "recipes/fashion_at.yaml"
    assert load_recipe(recipe, ["train.compile=true"]).train.compile
    with pytest.raises(UserError, match="train.compile: torch.compile cannot differentiate twice"):
        load_recipe(recipe, ["train.compile=true", "distill.grad_at.enabled=true"])


def test_every_problem_is_reported_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {name: fashion_mnist, limit_trian: 5}\ntrain: {epochs: -1, lr: abc}\ndistill: {at: {beta: -3}}\n")
    with pytest.raises(UserError) as e:
        load_recipe(bad)
    problems = e.value.problems
    assert "data.limit_trian: unknown key; did you mean data.limit_train?" in problems
    assert any(p.startswith("train.epochs: ") for p in problems)
    assert any(p.startswith("train.lr: ") for p in problems)
    assert any(p.startswith("distill.at.beta: ") and "greater than or equal to 0" in p for p in problems)
    assert len(problems) == 4


def test_student_needs_arch_or_size():
    with pytest.raises(UserError, match="student: set either student.arch or student.size"):
        load_recipe(ROOT / "tests/smoke.yaml", ["student.size=0.25"])
    assert load_recipe(ROOT / "tests/smoke.yaml", ["student.size=200k", "student.arch=null"]).student.size == "200k"
    with pytest.raises(UserError, match="student: set either student.arch or student.size"):
        load_recipe(ROOT / "recipes/fashion_at.yaml", ["student.arch=wrn-16-1"])
    assert load_recipe(ROOT / "recipes/fashion_at.yaml").student.init == "teacher"  # the demo grows its student


def test_schema_is_json_schema(cli):
    r = cli("recipe", "schema")
    assert r.exit_code == 0
    schema = json.loads(r.stdout)
    assert schema["additionalProperties"] is False
    assert {"data", "teacher", "student", "train", "distill", "verify", "seed", "device"} <= set(schema["properties"])


BAD_RECIPES = {
    "bad_yaml": ("data:\n  name: fashion_mnist\n  root: [unclosed\n", "bad_yaml.yaml:"),
    "unknown_key": ("trian: {epochs: 1}\n", "trian: unknown key; did you mean train?"),
    "wrong_type": ("train: {epochs: many}\n", "train.epochs: Input should be a valid integer"),
    "negative_beta": ("distill: {at: {beta: -1}}\n", "distill.at.beta: Input should be greater than or equal to 0"),
    "missing_root": ("data: {name: fashion_mnist, root: /nonexistent/fmnist}\n", "data.root: /nonexistent/fmnist does not exist"),
    "not_a_mapping": ("- a\n- b\n", "a recipe is a mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECIPES))
def test_malformed_recipe_exits_2_without_traceback(case, tmp_path, cli, teacher_ckpt):
    text, message = BAD_RECIPES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    r = cli("distill", teacher_ckpt, "--recipe", path, "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "out" / "report.json").exists()
