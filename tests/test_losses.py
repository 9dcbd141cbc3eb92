"""The AT and KD losses against their formulas, written here independently of compressor.distill."""

import pytest
import torch
import torch.nn.functional as F

from compressor import at_loss, attention_map, kd_loss
from compressor.distill.objective import Objective
from compressor.distill.pairs import Pair
from compressor.distill.points import Point
from compressor.distill.terms import Step
from compressor.recipe.load import load_recipe

from .conftest import RECIPE


def reference_at(x):  # the reference code's at(x), for p = 2
    return F.normalize(x.pow(2).mean(1).view(x.size(0), -1))


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 16, 7, 7, generator=g), torch.randn(8, 64, 7, 7, generator=g)


def test_attention_map_is_the_reference_formula(pair):
    s, _ = pair
    assert attention_map(s).shape == (8, 49)
    torch.testing.assert_close(attention_map(s), reference_at(s), rtol=0, atol=1e-7)
    assert torch.allclose(attention_map(s).norm(dim=1), torch.ones(8))


def test_at_loss_is_the_reference_formula(pair):
    s, t = pair
    expected = (reference_at(s) - reference_at(t)).pow(2).mean()
    torch.testing.assert_close(at_loss(s, t), expected, rtol=1e-6, atol=0)
    assert at_loss(s, s).item() == 0.0


def test_p_and_max_mapping_behave_as_defined(pair):
    s, _ = pair
    p = 3.0
    expected_p = F.normalize(s.abs().pow(p).mean(1).flatten(1))
    torch.testing.assert_close(attention_map(s, p=p), expected_p)
    expected_max = F.normalize(s.abs().pow(2).amax(1).flatten(1))
    torch.testing.assert_close(attention_map(s, p=2, mapping="max"), expected_max)
    # p = 1 differs from p = 2: the exponent actually reaches the map
    assert not torch.allclose(attention_map(s, p=1), attention_map(s, p=2))
    # the map ignores the sign of activations (|A|^p)
    torch.testing.assert_close(attention_map(-s, p=3), attention_map(s, p=3))


def test_larger_map_is_average_pooled_to_the_smaller():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 8, 14, 14, generator=g), torch.randn(4, 8, 7, 7, generator=g)
    expected = (reference_at(F.adaptive_avg_pool2d(s, 7)) - reference_at(t)).pow(2).mean()
    torch.testing.assert_close(at_loss(s, t), expected)
    torch.testing.assert_close(at_loss(t, s), expected)


def test_kd_loss_matches_hinton_formula():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    T, alpha = 4.0, 0.9
    p_t = F.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean()  # KL(p_t || p_s), mean over the batch
    expected = kl * T * T * alpha + F.cross_entropy(s, y) * (1 - alpha)
    torch.testing.assert_close(kd_loss(s, t, y, temperature=T, alpha=alpha), expected, rtol=1e-5, atol=1e-6)
    # alpha = 0 is plain cross-entropy
    torch.testing.assert_close(kd_loss(s, t, y, alpha=0.0), F.cross_entropy(s, y))


def test_gradients_reach_the_student_only():
    g = torch.Generator().manual_seed(3)
    student = torch.nn.Conv2d(3, 4, 3, padding=1)
    teacher = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 8, 8, generator=g)
    s_feat = student(x)
    with torch.no_grad():
        t_feat = teacher(x)
    logits_s, logits_t = s_feat.mean((2, 3)), t_feat.mean((2, 3))[:, :4]
    pair = Pair("g0", Point("t", (8, 8, 8), 1), Point("g0", (4, 8, 8), 1))
    objective = Objective.build(load_recipe(RECIPE).distill, [], student, teacher, [pair], torch.device("cpu"))
    loss = objective(Step(x, torch.tensor([0, 1]), logits_s, logits_t, [s_feat], [t_feat]))
    assert list(loss) == ["kd", "ce", "at.g0", "total"]
    torch.testing.assert_close(loss["total"], loss["kd"] + loss["ce"] + loss["at.g0"])
    torch.testing.assert_close(loss["at.g0"], 1000.0 * at_loss(s_feat, t_feat))
    loss["total"].backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert teacher.weight.grad is None


def test_without_teacher_the_loss_is_cross_entropy():
    logits, y = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    objective = Objective.build(load_recipe(RECIPE).distill, [], torch.nn.Linear(10, 10), None, [],
                                torch.device("cpu"))
    terms = objective(Step(torch.zeros(4, 10), y, logits))
    assert list(terms) == ["ce", "total"]
    torch.testing.assert_close(terms["total"], F.cross_entropy(logits, y))


def test_a_finite_blow_up_of_the_logits_is_divergence():
    """Logits that grow past train.max_logit stop the run though every loss term is still finite (issue 21: a
    grown efficientnet_b0 student reached ~1e8 and only the parity gate noticed)."""
    from compressor.train.meters import Diverged, Divergence, check_validation

    d = Divergence(torch.device("cpu"), logit_bound=1000.0)
    names = ["ce", "total"]
    d.see(0, names, torch.tensor([2.3, 2.3]), torch.full((4, 10), 50.0))
    assert d.step.item() == -1
    d.see(1, names, torch.tensor([9e4, 9e4]), torch.full((4, 10), -3e5))
    d.see(2, names, torch.tensor([float("nan"), float("nan")]), torch.zeros(4, 10))
    assert d.step.item() == 1  # the first bad step, not the later NaN
    message = str(d.error(0, 1, "the last good state is kept"))
    assert "the logits grew to |z| = 3e+05, beyond train.max_logit = 1000" in message and "total=9e+04" in message
    check_validation({"loss": 0.4, "max_abs_logit": 25.0}, 1000.0, 0, "")
    with pytest.raises(Diverged, match="on the validation images the loss is nan"):
        check_validation({"loss": float("nan"), "max_abs_logit": 0.0}, 1000.0, 0, "")
    with pytest.raises(Diverged, match="logits reach"):
        check_validation({"loss": 3.0, "max_abs_logit": 2e3}, 1000.0, 0, "", steps=50)
    check_validation({"loss": 3.0, "max_abs_logit": 2e3}, 1000.0, 0, "", steps=49)  # a smoke run: said, not stopped
