"""The job API's progress and cancellation: what a caller (the job service) sees of a running distillation, and
that cancelling it stops it as SIGTERM does (state saved, exit 130, `--resume` goes on)."""

from __future__ import annotations

import pytest

from compressor.core.errors import Cancelled
from compressor.core.progress import PHASES, ProgressEvent, Reporter, TerminalProgress, eta
from compressor.jobs.distill import distill
from compressor.recipe.load import load_recipe

from .conftest import RECIPE, SMOKE

TINY = [*SMOKE, "data.limit_train=192", "data.limit_test=100", "train.batch_size=32", "train.epochs=2",
        "train.log_every=1", "student.arch=wrn-10-1", "verify.batch_sizes=[1]", "device=cpu"]


def test_a_distillation_reports_its_phases_and_every_step(tmp_path, small_teacher):
    events: list[ProgressEvent] = []
    report = distill(small_teacher, load_recipe(RECIPE, TINY), tmp_path / "run", progress=events.append)
    phases = list(dict.fromkeys(e.phase for e in events))
    assert phases == [p for p in PHASES if p in phases] and phases[0] == "loading" and phases[-1] == "done"
    assert {"growing", "training", "testing", "exporting", "verifying", "reporting"} <= set(phases)
    steps = [e for e in events if e.phase == "training" and e.losses is not None]
    # 172 training images (192 less a 10% validation split) in batches of 32: 5 steps an epoch, logged each step
    assert [(e.epoch, e.step) for e in steps] == [(ep, s) for ep in (1, 2) for s in range(1, 6)]
    assert all(e.steps == 5 and e.epochs == 2 and e.images_per_second > 0 and "total" in e.losses for e in steps)
    assert steps[-1].eta_seconds == 0 and all(e.eta_seconds > 0 for e in steps[:-1])
    rows = [e.metrics for e in events if e.metrics is not None]
    assert [r["epoch"] for r in rows] == [1, 2] == [h["epoch"] for h in report.distillation.history]


def test_cancelling_stops_like_sigterm_and_resume_finishes(tmp_path, small_teacher):
    recipe = load_recipe(RECIPE, TINY)
    seen: list[ProgressEvent] = []
    # cancel once the second epoch's third step has been reported
    cancel = lambda: any(e.epoch == 2 and e.step == 3 and e.losses for e in seen)  # noqa: E731
    with pytest.raises(Cancelled) as stopped:
        distill(small_teacher, recipe, tmp_path / "run", progress=seen.append, cancel=cancel)
    assert stopped.value.exit_code == 130
    assert "cancelled at epoch 2 step 4" in str(stopped.value) and "--resume" in str(stopped.value)
    assert (tmp_path / "run" / "train_state.pt").exists() and not (tmp_path / "run" / "report.json").exists()
    resumed = distill(small_teacher, recipe, tmp_path / "run", resume=True)
    assert resumed.distillation.resumed_from_epoch == 2


def test_cancelling_between_phases_says_how_to_go_on(tmp_path, small_teacher):
    seen: list[ProgressEvent] = []
    cancel = lambda: any(e.phase == "testing" for e in seen)  # noqa: E731  (training has finished by then)
    with pytest.raises(Cancelled) as stopped:
        distill(small_teacher, load_recipe(RECIPE, TINY), tmp_path / "run", progress=seen.append, cancel=cancel)
    assert "train_state.pt holds the training state" in str(stopped.value)
    assert not any(e.phase == "exporting" for e in seen)


def test_eta_and_the_terminal_subscriber():
    assert eta(1, 3, 0, 10, 5.0) is None  # nothing done yet: no speed to go by
    assert eta(1, 3, 5, 10, 5.0) == pytest.approx(25.0)  # 5 s for 5 steps; 5 + 2 x 10 steps left
    assert eta(2, 3, 8, 10, 3.0, first=5) == pytest.approx(12.0)  # resumed at step 5: 3 steps took 3 s
    lines = []

    class Console:
        def print(self, text, **_):
            lines.append(text)

    bar = TerminalProgress(Console())
    bar.end_epoch("distill", {"epoch": 1, "train_loss": {"total": 1.0, "ce": 1.0}, "train_accuracy": 50.0,
                              "images_per_second": 10.0, "train_seconds": 2.0, "lr": 0.1})
    assert lines == ["distill epoch 1: loss 1.000 ce 1.000 train 50.00% 10 img/s 2.0s lr 0.1"]
    reporter = Reporter("train", [lambda e: lines.append(e.phase)], cancel=lambda: False)
    reporter.phase("testing")
    assert lines[-1] == "testing" and not reporter.cancelled()
