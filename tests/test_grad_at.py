"""Gradient-based AT against autograd and finite-difference references, the flip term, beta schedules, and a real
distillation with gradient AT through the CLI."""

import json

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from compressor.core.errors import UserError
from compressor.core.schedule import factor
from compressor.distill.grad_at import FlipInvariance, GradientAT, gradient_distance, hflip, input_gradient
from compressor.distill.objective import Objective
from compressor.distill.pairs import find_pairs
from compressor.distill.terms import Step, Weight
from compressor.models import create_model
from compressor.models.checkpoint import load_model
from compressor.recipe.load import load_recipe

from .conftest import RECIPE, run_cli_here, sets


def grad_at_terms(student, teacher, x, y, logits, *, beta, flip=False, teacher_logits=None) -> dict:
    """The objective's gradient-AT terms of one step, weighted by beta, as the trainer sums them."""
    terms = [GradientAT(Weight(beta), teacher)] + ([FlipInvariance(Weight(beta), student)] if flip else [])
    out = Objective(terms)(Step(x, y, logits, teacher_graph=teacher_logits))
    del out["total"]
    return out


def tiny_net(seed: int, symmetric: bool = False) -> nn.Module:
    """conv3x3 - tanh - conv3x3 - tanh - global mean - linear, in float64 (no BatchNorm: images independent)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 5, 3, padding=1), nn.Tanh(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).double()
    if symmetric:  # left-right symmetric kernels + stride 1 + symmetric padding + global pooling: flip-invariant
        with torch.no_grad():
            for m in net:
                if isinstance(m, nn.Conv2d):
                    m.weight.copy_((m.weight + m.weight.flip(-1)) / 2)
    return net.eval()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64), torch.tensor([0, 2, 1])


def ce_sum(net, x, y):
    return F.cross_entropy(net(x), y, reduction="sum")


def test_input_gradient_matches_finite_differences(batch):
    x, y = batch
    net = tiny_net(0)
    x = x.clone().requires_grad_(True)
    j = input_gradient(net(x), y, x, create_graph=False)
    assert j.shape == x.shape
    eps = 1e-6
    g = torch.Generator().manual_seed(1)
    for _ in range(12):
        idx = tuple(int(torch.randint(0, s, (1,), generator=g)) for s in x.shape)
        e = torch.zeros_like(x)
        e[idx] = eps
        with torch.no_grad():
            fd = (ce_sum(net, x + e, y) - ce_sum(net, x - e, y)) / (2 * eps)
        assert abs(fd.item() - j[idx].item()) < 1e-7


def test_grad_at_value_and_double_backprop_match_references(batch):
    x, y = batch
    student, teacher = tiny_net(0), tiny_net(1)
    beta = 0.7

    # reference J: per-image gradients from torch.func, independent of compressor.distill.grad_at
    def per_image(net):
        params = dict(net.named_parameters())
        f = lambda xi, yi: F.cross_entropy(functional_call(net, params, (xi[None],)), yi[None])  # noqa: E731
        return vmap(grad(f))(x, y)

    j_s, j_t = per_image(student), per_image(teacher)
    expected = beta / 2 * ((j_s - j_t) ** 2).flatten(1).sum(1).mean()

    def loss() -> torch.Tensor:
        xr = x.clone().requires_grad_(True)
        return grad_at_terms(student, teacher, xr, y, student(xr), beta=beta)["grad_at"]

    value = loss()
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)

    # the student's weight gradient of the term (double backprop) against central finite differences
    w = student[2].weight
    (dw,) = torch.autograd.grad(value, w)
    assert dw.abs().max() > 0
    eps = 1e-6
    for idx in [(0, 0, 0, 0), (1, 2, 1, 1), (4, 3, 2, 0), (2, 1, 0, 2)]:
        with torch.no_grad():
            w[idx] += eps
        up = loss().item()
        with torch.no_grad():
            w[idx] -= 2 * eps
        down = loss().item()
        with torch.no_grad():
            w[idx] += eps
        assert abs((up - down) / (2 * eps) - dw[idx].item()) < 1e-6 * max(1.0, abs(dw[idx].item()))
    # the teacher is a constant target: nothing flows into it
    assert all(p.grad is None for p in teacher.parameters())


def test_flip_term_is_zero_for_a_flip_invariant_model_and_not_otherwise(batch):
    x, y = batch
    symmetric_image = (x + hflip(x)) / 2
    teacher = tiny_net(2)
    for image in (x, symmetric_image):
        sym = tiny_net(0, symmetric=True)
        xr = image.clone().requires_grad_(True)
        terms = grad_at_terms(sym, teacher, xr, y, sym(xr), beta=1.0, flip=True)
        assert terms["grad_at.flip"].item() < 1e-20
        assert terms["grad_at"].item() > 1e-6  # a different teacher: the main term is not zero
    plain = tiny_net(0)
    xr = symmetric_image.clone().requires_grad_(True)
    assert grad_at_terms(plain, teacher, xr, y, plain(xr), beta=1.0, flip=True)["grad_at.flip"].item() > 1e-8


def test_gradient_distance_is_half_the_mean_squared_norm():
    a, b = torch.ones(4, 2, 3, 3), torch.zeros(4, 2, 3, 3)
    assert gradient_distance(a, b).item() == pytest.approx(0.5 * 18)
    assert gradient_distance(a, a).item() == 0.0


@pytest.mark.parametrize("student_arch, teacher_arch", [("wrn-10-1", "wrn-10-2"), ("resnet18-w0.25", "resnet18-w0.5"),
                                                        ("resnet50-w0.125", "resnet34-w0.25")])
@pytest.mark.e2e  # trains or grows real models: tens of seconds on 2 cores
def test_grad_at_trains_every_architecture_family(student_arch, teacher_arch):
    torch.manual_seed(0)
    student = create_model(student_arch, 10, 1).train()
    teacher = create_model(teacher_arch, 10, 1).eval().requires_grad_(False)
    x = torch.randn(2, 1, 16, 16).requires_grad_(True)
    y = torch.tensor([0, 3])
    terms = grad_at_terms(student, teacher, x, y, student(x), beta=1.0, flip=True)
    assert set(terms) == {"grad_at", "grad_at.flip"} and all(torch.isfinite(v) and v > 0 for v in terms.values())
    sum(terms.values()).backward()
    # the second-order gradient reaches the student's convolutions
    convs = [m.weight for m in student.modules() if isinstance(m, nn.Conv2d)]
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in convs)


def test_teacher_gradient_from_the_steps_own_forward_equals_a_separate_one():
    """The trainer hands grad AT the step's teacher forward (grad enabled on x) instead of a second forward."""
    torch.manual_seed(0)
    student = create_model("wrn-10-1", 10, 1).train()
    teacher = create_model("wrn-10-2", 10, 1).train()
    with torch.no_grad():
        teacher(torch.randn(16, 1, 16, 16) * 2 + 0.5)  # non-trivial BN statistics
    teacher.eval().requires_grad_(False)
    x = torch.randn(4, 1, 16, 16).requires_grad_(True)
    y = torch.tensor([0, 3, 5, 9])
    logits = student(x)
    separate = grad_at_terms(student, teacher, x, y, logits, beta=10.0)["grad_at"]
    shared = grad_at_terms(student, teacher, x, y, logits, beta=10.0, teacher_logits=teacher(x))["grad_at"]
    assert separate.item() > 0
    torch.testing.assert_close(shared, separate, rtol=1e-5, atol=1e-7)


def test_beta_schedules():
    assert [factor("constant", e, 10) for e in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert [factor("step", e, 10, [2, 4], 0.1) for e in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cos = [factor("cosine", e, 10) for e in range(10)]
    assert cos[0] == 1.0 and cos[5] == pytest.approx(0.5) and all(a > b for a, b in zip(cos, cos[1:]))
    # step without its own milestones follows the learning rate's
    r = load_recipe(RECIPE, ["distill.at.beta_schedule=step", "train.milestones=[3]", "distill.at.beta_gamma=0.5"])
    student, teacher = create_model("wrn-10-1", 10, 1), create_model("wrn-10-2", 10, 1)
    pairs = find_pairs("auto", teacher, student, (1, 28, 28))
    objective = Objective.build(r.distill, r.train.milestones, student, teacher, pairs, torch.device("cpu"))
    weights = [t.weight for t in objective.terms if t.name.startswith("at.")]
    assert len(weights) == 3 and [weights[0].at(e, 6) for e in (2, 3)] == [1000.0, 500.0]
    assert r.distill.at.beta_schedule == "multistep"  # step is multistep's other name, as for train.schedule
    with pytest.raises(UserError, match="beta_schedule: multistep needs"):
        load_recipe(RECIPE, ["distill.at.beta_schedule=step"])
    with pytest.raises(UserError, match="distill.at.beta_schedule"):
        load_recipe(RECIPE, ["distill.at.beta_schedule=linear"])


def test_methods_list_the_new_terms():
    r = load_recipe(RECIPE, ["distill.grad_at.enabled=true", "distill.feature.enabled=true"])
    assert r.methods() == ["kd", "at", "grad_at", "feature"]
    assert load_recipe(RECIPE).methods() == ["kd", "at"]


def test_distill_with_gradient_at_through_the_cli(teacher_ckpt, tmp_path):
    out = tmp_path / "run"
    r = run_cli_here("distill", teacher_ckpt, "--recipe", RECIPE, "--out", out,
                *sets("distill.grad_at.enabled=true", "distill.grad_at.flip=true", "distill.at.beta_schedule=cosine",
                      "verify.batch_sizes=[1]", "data.limit_train=384"))
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"ce", "kd", "at.group0", "grad_at", "grad_at.flip", "total"} <= set(rows[0]["train_loss"])
    report = json.loads((out / "report.json").read_text())
    assert report["distillation"]["methods"] == ["kd", "at", "grad_at"]
    assert report["export"]["max_abs_diff"] <= 1e-4  # gradient AT changes training only: the export is clean
    student, ck = load_model(out / "student.pt")
    assert set(ck["state_dict"]) == set(create_model("wrn-16-1", 10, 1).state_dict())
