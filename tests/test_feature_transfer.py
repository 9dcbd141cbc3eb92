"""F-ActT: the loss against its formula, the 1x1 adapters (trained with the student, kept out of the export), and a
real distillation with F-ActT alone through the CLI."""

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from compressor.distill.feature import FeatureAdapters, feature_loss
from compressor.distill.objective import Objective
from compressor.distill.pairs import find_pairs
from compressor.distill.terms import Step
from compressor.models import create_model
from compressor.models.checkpoint import load_model, load_trusted_dict
from compressor.recipe.load import load_recipe
from compressor.train.optim import build_optimizer

from .conftest import RECIPE, run_cli_here, sets

CPU = torch.device("cpu")


def wrn_pairs(teacher, student):
    pairs = find_pairs("auto", teacher, student, (1, 28, 28))
    assert [p.name for p in pairs] == ["group0", "group1", "group2"]
    return pairs


def test_feature_loss_is_the_adapted_mean_squared_difference():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, 4, 4, generator=g)
    adapter = nn.Conv2d(4, 6, 1, bias=False)
    expected = (F.conv2d(F.avg_pool2d(s, 2), adapter.weight) - t).pow(2).mean()
    torch.testing.assert_close(feature_loss(s, t, adapter), expected)
    # equal channels: no adapter, the larger map (here the teacher's) pooled to the smaller
    t2 = torch.randn(2, 4, 16, 16, generator=g)
    torch.testing.assert_close(feature_loss(s, t2, nn.Identity()), (s - F.avg_pool2d(t2, 2)).pow(2).mean())
    assert feature_loss(s, s, nn.Identity()).item() == 0.0


def test_adapters_follow_the_channel_counts():
    student, teacher = create_model("wrn-16-1", 10, 1), create_model("wrn-16-2", 10, 1)
    adapters = FeatureAdapters.for_pairs(wrn_pairs(teacher, student))
    # group0 of both has 16 channels (WRN's first group is 16·K but K=1 vs 2): 16->32, 32->64, 64->128
    shapes = [tuple(a.weight.shape) if isinstance(a, nn.Conv2d) else None for a in adapters.adapters]
    assert shapes == [(32, 16, 1, 1), (64, 32, 1, 1), (128, 64, 1, 1)]
    same = FeatureAdapters.for_pairs(wrn_pairs(create_model("wrn-16-1", 10, 1), student))
    assert all(isinstance(a, nn.Identity) for a in same.adapters)


def test_adapters_are_trained_with_the_student():
    recipe = load_recipe(RECIPE, ["distill.feature.enabled=true"])
    torch.manual_seed(0)
    student, teacher = create_model("wrn-10-1", 10, 1), create_model("wrn-10-2", 10, 1).eval()
    on = load_recipe(RECIPE, ["distill.feature.enabled=true", "distill.at.enabled=false", "distill.kd.enabled=false"])
    objective = Objective.build(on.distill, on.train.milestones, student, teacher, wrn_pairs(teacher, student),
                                CPU)
    assert objective.uses_features and not objective.needs_input_grad and objective.trainable is not None
    opt, _ = build_optimizer(objective.optimized(student), recipe.train, 1, 1)
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert {id(p) for p in objective.trainable.parameters()} <= in_opt
    assert {id(p) for p in student.parameters()} <= in_opt
    # the student's parameters come first, in their own order (resume states stay compatible)
    assert [id(p) for p in opt.param_groups[0]["params"][: len(list(student.parameters()))]] == [id(p) for p in student.parameters()]

    before = [p.detach().clone() for p in objective.trainable.parameters()]
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    feats = {}
    hooks = [dict(m.named_modules())[f"group{i}"].register_forward_hook(
        lambda _m, _i, o, k=(role, i): feats.__setitem__(k, o)) for role, m in (("s", student), ("t", teacher)) for i in range(3)]
    logits = student(x)
    with torch.no_grad():
        teacher(x)
    for h in hooks:
        h.remove()
    terms = objective(Step(x, y, logits, student_features=[feats["s", i] for i in range(3)],
                           teacher_features=[feats["t", i] for i in range(3)]))
    assert list(terms) == ["ce", "feat.group0", "feat.group1", "feat.group2", "total"]
    torch.testing.assert_close(terms["total"], sum(v for k, v in terms.items() if k != "total"))
    opt.zero_grad()
    terms["total"].backward()
    opt.step()
    assert all(not torch.equal(b, a) for b, a in zip(before, objective.trainable.parameters()))
    assert set(objective.state_dict()) == {f"adapters.{i}.weight" for i in range(3)}


def test_the_objective_holds_only_the_enabled_terms():
    student, teacher = create_model("wrn-10-1", 10, 1), create_model("wrn-10-2", 10, 1)
    pairs = wrn_pairs(teacher, student)
    default = Objective.build(load_recipe(RECIPE).distill, [], student, teacher, pairs, CPU)  # smoke: AT + KD
    assert default.names == ["kd", "ce", "at.group0", "at.group1", "at.group2"] and default.trainable is None
    on = load_recipe(RECIPE, ["distill.feature.enabled=true", "distill.grad_at.enabled=true", "distill.grad_at.flip=true"])
    assert Objective.build(on.distill, on.train.milestones, student, teacher, pairs, CPU).names == [
        "kd", "ce", *(f"at.group{i}" for i in range(3)), *(f"feat.group{i}" for i in range(3)), "grad_at", "grad_at.flip"]
    # without a teacher (a teacher trained from scratch) every method is off: cross-entropy alone
    alone = Objective.build(on.distill, on.train.milestones, student, None, [], CPU)
    assert alone.names == ["ce"] and not alone.needs_teacher and alone.trainable is None


def test_distill_with_feature_transfer_keeps_adapters_out_of_the_export(teacher_ckpt, tmp_path):
    out = tmp_path / "run"
    r = run_cli_here("distill", teacher_ckpt, "--recipe", RECIPE, "--out", out,
                *sets("distill.feature.enabled=true", "distill.at.enabled=false", "distill.kd.enabled=false",
                      "verify.batch_sizes=[1]", "data.limit_train=384"))
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert set(rows[0]["train_loss"]) == {"ce", "feat.group0", "feat.group1", "feat.group2", "total"}
    report = json.loads((out / "report.json").read_text())
    assert report["distillation"]["methods"] == ["feature"]
    assert [p["student"] for p in report["distillation"]["pairs"]] == ["group0", "group1", "group2"]
    fresh = create_model("wrn-16-1", 10, 1)
    assert report["student"]["params"] == sum(p.numel() for p in fresh.parameters())

    # the adapters are in the resume state, not in the student checkpoint
    state = load_trusted_dict(out / "train_state.pt")
    assert {k: tuple(v.shape) for k, v in state["extra"].items()} == {
        "adapters.0.weight": (32, 16, 1, 1), "adapters.1.weight": (64, 32, 1, 1), "adapters.2.weight": (128, 64, 1, 1)}
    student, ck = load_model(out / "student.pt")
    assert set(ck["state_dict"]) == set(fresh.state_dict())
    assert report["export"]["max_abs_diff"] <= 1e-4

    # growing the epochs resumes the run, adapters included
    r = run_cli_here("distill", teacher_ckpt, "--recipe", RECIPE, "--out", out, "--resume",
                *sets("distill.feature.enabled=true", "distill.at.enabled=false", "distill.kd.enabled=false",
                      "verify.batch_sizes=[1]", "data.limit_train=384", "train.epochs=2"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    resumed = load_trusted_dict(out / "train_state.pt")["extra"]
    assert not torch.equal(resumed["adapters.0.weight"], state["extra"]["adapters.0.weight"])


@pytest.mark.parametrize("key", ["distill.feature.beta=-1", "distill.feature.unknown=1"])
def test_feature_recipe_keys_are_validated(key):
    from compressor.core.errors import UserError

    with pytest.raises(UserError, match="distill.feature"):
        load_recipe(RECIPE, [key])


def test_a_new_term_is_one_builder_in_the_registry(monkeypatch, tmp_path):
    """What docs/ARCHITECTURE.md promises: a term class and one TERMS entry, and fit trains with it and logs it."""
    from dataclasses import dataclass

    from compressor.data.datasets import load_data
    from compressor.distill import objective as objective_module
    from compressor.distill.terms import Reads, Weight
    from compressor.train.loop import FitSpec, fit
    from compressor.train.state import StatePaths

    from .conftest import ROOT

    @dataclass
    class LogitNorm(Reads):  # a toy regulariser on the student's logits
        weight: Weight
        name = "logit_norm"

        def __call__(self, step):
            return step.logits.pow(2).mean()

    monkeypatch.setitem(objective_module.TERMS, "logit_norm", lambda ctx: [LogitNorm(Weight(0.01))])
    recipe = load_recipe(RECIPE, [f"data.root={ROOT / 'data'}", "data.limit_train=256", "data.val_fraction=0",
                                  "train.epochs=1", "train.batch_size=64"])
    data = load_data(recipe.data, recipe.seed)
    student, teacher = create_model("wrn-10-1", 10, 1), create_model("wrn-10-2", 10, 1).eval()
    result = fit(student, data, FitSpec.of(recipe, "distill", teacher),
                 StatePaths(tmp_path / "state.pt", tmp_path / "metrics.jsonl"), device=CPU, teacher=teacher,
                 pairs=find_pairs("auto", teacher, student, data.input_shape))
    terms = result.history[0]["train_loss"]
    assert list(terms) == ["kd", "ce", "at.group0", "at.group1", "at.group2", "logit_norm", "total"]
    assert terms["logit_norm"] > 0
    assert terms["total"] == pytest.approx(sum(v for k, v in terms.items() if k != "total"), rel=1e-5)
    logged = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
    assert logged == terms
