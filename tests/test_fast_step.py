"""The speed-ups inside fit() do not change what a distillation step computes.

fit() folds the frozen teacher's BatchNorm into its convolutions (on a copy: the caller's teacher stays as it
was), and `train.compile` runs both forwards through torch.compile. Each run here is a real AT+KD epoch of
WRN-16-2 -> WRN-16-1 on Fashion-MNIST images, compared with the plain run term by term.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from compressor.core.device import seed_everything
from compressor.core.errors import UserError
from compressor.data.datasets import load_data
from compressor.distill.pairs import find_pairs
from compressor.models import create_model
from compressor.recipe.load import load_recipe
from compressor.train import setup as train_setup
from compressor.train.loop import FitSpec, fit
from compressor.train.state import StatePaths

from .conftest import RECIPE, ROOT


@pytest.fixture(scope="module")
def setup():
    """A recipe, 384 real training images, and a teacher whose BN layers hold non-trivial statistics."""
    recipe = load_recipe(RECIPE, [f"data.root={ROOT / 'data'}", "data.limit_train=384", "data.val_fraction=0",
                                  "train.epochs=1", "train.log_every=1"])
    data = load_data(recipe.data, recipe.seed)
    torch.manual_seed(0)
    teacher = create_model("wrn-16-2", data.num_classes, 1).train()
    with torch.no_grad():  # running statistics from real batches: eval BN is then far from the identity
        for m in teacher.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        teacher(((data.train.images[:256].float() / 255) - 0.286) / 0.353)
    teacher.eval()
    return recipe, data, teacher


def distil(setup, tmp_path, **recipe_train) -> tuple[list[dict], torch.nn.Module]:
    recipe, data, teacher = setup
    recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update=recipe_train)})
    seed_everything(0)
    student = create_model("wrn-16-1", data.num_classes, 1)
    shape = data.input_shape
    pairs = find_pairs("auto", teacher, student, shape)
    result = fit(student, data, FitSpec.of(recipe, "distill", teacher),
                 StatePaths(tmp_path / "state.pt", tmp_path / "metrics.jsonl"), device=torch.device("cpu"),
                 teacher=teacher, pairs=pairs)
    return result.history, result.model


def losses(history: list[dict]) -> dict[str, float]:
    return history[-1]["train_loss"]


def test_folding_the_teacher_leaves_it_untouched_and_changes_no_loss_term(setup, tmp_path, monkeypatch):
    teacher = setup[2]
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    folded_history, _ = distil(setup, tmp_path / "folded")
    # the caller's teacher: same weights, same modules, same memory format, still trainable parameters
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules()) == 13
    assert all(p.requires_grad for p in teacher.parameters())
    assert all(m.weight.is_contiguous() for m in teacher.modules() if isinstance(m, torch.nn.Conv2d))

    calls = []  # the unfolded run (fit then changes the teacher it is given: later tests fold it again)
    monkeypatch.setattr(train_setup, "fold_batchnorm", lambda m, keep: calls.append(m) or m)
    plain_history, _ = distil(setup, tmp_path / "plain")
    assert calls, "fit() no longer goes through fold_batchnorm"
    folded, plain = losses(folded_history), losses(plain_history)
    assert set(folded) == set(plain) >= {"ce", "kd", "total", "at.group0", "at.group1", "at.group2"}
    for k in plain:  # three SGD steps later the two runs still agree to float rounding
        assert folded[k] == pytest.approx(plain[k], rel=1e-3, abs=1e-5), k


@pytest.mark.e2e  # trains or grows real models: tens of seconds on 2 cores
def test_fit_folds_every_teacher_bn_that_follows_a_conv(setup, tmp_path, monkeypatch):
    seen = []
    real = train_setup.fold_batchnorm
    monkeypatch.setattr(train_setup, "fold_batchnorm", lambda m, keep: seen.append(real(m, keep)) or seen[-1])
    distil(setup, tmp_path)
    bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in seen[0].modules())
    # WRN-16-2 has 13 BNs: six blocks' conv1 -> bn2, and the stem conv -> the first block's bn1, fold; the
    # other five blocks' bn1 (after a residual sum) and the final BN stay
    assert bns == 13 - 7


def test_compile_without_a_compiler_is_one_clear_error(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++ / c++ / clang++ to be found
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(UserError, match="train.compile: torch.compile needs a C\\+\\+ compiler"):
        distil(setup, tmp_path, compile=True)


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="needs a C++ compiler")
def test_compiled_step_matches_the_eager_step(setup, tmp_path):
    eager_history, eager = distil(setup, tmp_path / "eager")
    compiled_history, compiled = distil(setup, tmp_path / "compiled", compile=True)
    e, c = losses(eager_history), losses(compiled_history)
    assert set(c) == set(e) and {"at.group0", "at.group1", "at.group2"} <= set(c)  # the hooks fired
    for k in e:
        assert c[k] == pytest.approx(e[k], rel=2e-2, abs=1e-4), k
    assert all(torch.isfinite(p).all() for p in compiled.parameters())
    assert not hasattr(compiled, "_orig_mod")  # the returned model is the plain module, ready to export
