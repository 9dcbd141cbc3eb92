"""Behaviour lock: fixed-seed CPU distillations compute the loss terms recorded before the package redesign.

tests/golden/loss_terms.json was written by tests/golden/record.py on the code before issue 16's redesign; the
cases (tests/golden_cases.py) run the real CLI with arithmetic that is the same on every x86 CPU, so the numbers
are compared at 1e-6 relative on any machine. A difference means the objective, the loop, the schedules or the
data order changed what training computes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from .golden_cases import CASES, run_case

EXPECTED = json.loads((Path(__file__).parent / "golden" / "loss_terms.json").read_text())["cases"]


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_terms_match_the_recording(case, tmp_path):
    rows = run_case(case, tmp_path)
    expected = EXPECTED[case]
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in expected]
    for got, want in zip(rows, expected):
        assert list(got["train_loss"]) == list(want["train_loss"]), "the named terms (and their order) changed"
        bad = {k: (got["train_loss"][k], v) for k, v in want["train_loss"].items()
               if not close(got["train_loss"][k], v)}
        assert not bad, f"epoch {want['epoch']}: terms moved (got, recorded): {bad}"
        for key in ("lr", "train_accuracy", "val_accuracy"):
            assert close(got[key], want[key]), (want["epoch"], key, got[key], want[key])


def test_the_comparison_can_fail():
    # a one-in-a-million change in one term is caught; float32 rounding of the same arithmetic is not possible here
    want = EXPECTED["at_kd"][0]["train_loss"]["total"]
    assert close(want, want) and not close(want, want * (1 + 3e-6))
