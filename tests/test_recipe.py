"""Recipes: shipped ones validate, overrides work, every problem is reported at once with exit 2."""

import json

import pytest

from compressor import load_recipe
from compressor.core.errors import UserError

from .conftest import ROOT


@pytest.mark.parametrize("path", sorted([*(ROOT / "recipes").glob("*.yaml"), *(ROOT / "tests").glob("*.yaml")]),
                         ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path, cli):
    r = cli("recipe", "validate", path)
    assert r.exit_code == 0, r.output
    assert load_recipe(path).name == path.stem


def test_every_shipped_recipe_validates_against_the_printed_json_schema(cli):
    """The published schema (`compress recipe schema`) is generated from the models that validate, and agrees
    with them: every shipped recipe, as YAML reads it (`amp: off` is the boolean false), passes a JSON-Schema
    validator; a recipe the models refuse for a type or a key fails it too."""
    import jsonschema
    import yaml

    r = cli("recipe", "schema")
    assert r.exit_code == 0
    validator = jsonschema.Draft202012Validator(json.loads(r.stdout))
    shipped = sorted([*(ROOT / "recipes").glob("*.yaml"), *(ROOT / "tests").glob("*.yaml")])
    assert len(shipped) >= 5
    for path in shipped:
        raw = yaml.safe_load(path.read_text())
        assert [e.message for e in validator.iter_errors(raw)] == [], path
    assert yaml.safe_load((ROOT / "recipes" / "fashion_teacher.yaml").read_text())["train"]["amp"] is False
    for bad in ({"train": {"lrr": 0.1}}, {"train": {"epochs": "three"}}, {"data": {"loader": "disk"}},
                {"distill": {"at": {"beta": -1}}}):
        assert list(validator.iter_errors(bad)), bad
        with pytest.raises(UserError):
            from compressor.recipe.load import validate_recipe

            validate_recipe(bad)


@pytest.mark.parametrize("text", ["", "\n   \n", "# only a comment\n# train: {epochs: 3}\n", "null\n", "~\n"],
                         ids=["0-bytes", "blank", "comments", "null", "tilde"])
def test_an_empty_recipe_file_is_an_error(text, tmp_path, cli):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match="empty recipe file") as e:
        load_recipe(path)
    assert e.value.problems == [f"{path}: empty recipe file (a recipe is a mapping of sections: data, teacher, "
                                "student, ...)"]
    r = cli("recipe", "validate", path)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert [ln for ln in r.output.splitlines() if ln.startswith("error: ")] == [f"error: {e.value.problems[0]}"]


@pytest.mark.parametrize("key, name, phrase", [
    ("teacher.arch", "wrn-16-x", "unknown model 'wrn-16-x'"),
    ("teacher.arch", "wrn-15-2", "wrn-15-2: depth must be 6n+4"),
    ("student.arch", "resnet1000", "unknown model 'resnet1000'; did you mean resnet101"),
    ("student.arch", "mobilenet_v3_smal", "did you mean mobilenet_v3_small"),
    ("teacher.arch", "timm:nonexistent", "timm"),
    ("student.arch", "wrn-16-1-pruned", "unknown model 'wrn-16-1-pruned'"),  # a pruned student is grown, not named
])
def test_architectures_that_do_not_exist_are_refused_by_validation(key, name, phrase, cli):
    """Found when the recipe is read (no data loaded, nothing built), one line naming the key."""
    with pytest.raises(UserError) as e:
        load_recipe(ROOT / "tests/smoke.yaml", [f"{key}={name}"])
    (problem,) = e.value.problems
    assert problem.startswith(f"{key}: ") and phrase in problem, problem
    r = cli("recipe", "validate", ROOT / "tests/smoke.yaml", "--set", f"{key}={name}")
    assert r.exit_code == 2 and f"{key}: " in r.output and "Traceback" not in r.output


def test_unknown_names_list_what_exists():
    with pytest.raises(UserError) as e:
        load_recipe(ROOT / "tests/smoke.yaml", ["teacher.arch=vgg-large"])
    assert "known: wrn-D-K" in e.value.problems[0] and "torchvision" in e.value.problems[0]
    assert "timm:NAME" in e.value.problems[0]


@pytest.mark.parametrize("key, name", [
    ("teacher.arch", "wrn-40-4"), ("student.arch", "wrn-10-0.5"), ("student.arch", "resnet18-w0.25"),
    ("teacher.arch", "resnet50"), ("student.arch", "mobilenet_v3_small"), ("teacher.arch", "wrn-16-2-pruned"),
])
def test_architectures_that_exist_validate(key, name):
    assert load_recipe(ROOT / "tests/smoke.yaml", [f"{key}={name}"]).model_dump()[key.split(".")[0]]["arch"] == name


def test_timm_names_are_checked_against_timm():
    pytest.importorskip("timm", reason="timm is an optional extra: pip install 'compressor[timm]'")
    assert load_recipe(ROOT / "tests/smoke.yaml", ["teacher.arch=timm:test_resnet"]).teacher.arch == "timm:test_resnet"
    with pytest.raises(UserError, match="teacher.arch: unknown timm model 'nonexistent'"):
        load_recipe(ROOT / "tests/smoke.yaml", ["teacher.arch=timm:nonexistent"])


def test_only_a_written_teacher_arch_counts_as_given(tmp_path):
    """teacher.arch left out is the default; written in the file or with --set (even as the default's
    text) it is given, and must then match a compressor checkpoint's own architecture (load_teacher)."""
    from compressor.recipe.schema import teacher_arch_given

    smoke = load_recipe(ROOT / "tests/smoke.yaml")
    assert smoke.teacher.arch == "wrn-16-2" and not teacher_arch_given(smoke)
    assert teacher_arch_given(load_recipe(ROOT / "tests/smoke.yaml", ["teacher.arch=wrn-16-2"]))
    assert teacher_arch_given(load_recipe(ROOT / "recipes/fashion_at.yaml"))


def test_the_default_schedule_decays_and_multistep_needs_milestones(tmp_path):
    from compressor.train.optim import lr_factor

    plain = tmp_path / "plain.yaml"
    plain.write_text("name: plain\n")
    train = load_recipe(plain).train
    assert train.schedule == "cosine"
    factor = lr_factor(train, epochs=train.epochs, steps_per_epoch=10)
    assert factor(0) == 1.0 and factor(15) == pytest.approx(0.5) and factor(30) == pytest.approx(0.0)
    with pytest.raises(UserError) as e:
        load_recipe(plain, ["train.schedule=multistep"])
    assert e.value.problems == ["train.milestones: required for schedule multistep (e.g. [60, 120, 160]); or use "
                                "schedule cosine or constant"]
    stepped = load_recipe(plain, ["train.schedule=multistep", "train.milestones=[2]"]).train
    assert [lr_factor(stepped, 3, 10)(s) for s in (19, 20)] == [1.0, pytest.approx(0.2)]
    assert load_recipe(plain, ["train.schedule=constant"]).train.milestones == []


def test_shipped_recipes_keep_their_schedules():
    """Each names its schedule; the paper's CIFAR and ImageNet recipes step at their milestones, the others anneal."""
    schedules = {p.name: (load_recipe(p).train.schedule, load_recipe(p).train.milestones)
                 for p in [*(ROOT / "recipes").glob("*.yaml"), *(ROOT / "tests").glob("*.yaml")]}
    assert schedules == {"cifar_at.yaml": ("multistep", [60, 120, 160]), "fashion_at.yaml": ("cosine", []),
                         "fashion_teacher.yaml": ("cosine", []), "imagefolder_resnet_at.yaml": ("cosine", []),
                         "imagenet_at.yaml": ("multistep", [30, 60]), "smoke.yaml": ("cosine", []),
                         "fashion_table1_scratch.yaml": ("multistep", [5, 9, 12]),  # the paper's shape, x 15/200
                         "fashion_grown_by_size.yaml": ("cosine", [])}


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
