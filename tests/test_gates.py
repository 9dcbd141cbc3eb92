"""Every gate is a pure function of measured numbers and its limit (verify.gates): checked here on fixed numbers,
the edges included, so a gate's rule is pinned down without a noisy machine's timings deciding what is tested."""

from __future__ import annotations

import pytest

from compressor.recipe.schema import VerifyConfig
from compressor.verify import gates
from compressor.verify.results import Gate


def test_parity_tolerance_grows_with_the_logits():
    g = gates.parity("max_abs_diff", 3.7e-4, 1286.0, 1e-4, 1e-5)  # a correct export with logits up to 1,286
    assert g.limit == pytest.approx(1e-4 + 1e-5 * 1286) and g.passed and g.value == 3.7e-4
    assert not gates.parity("max_abs_diff", 0.47, 212.0, 1e-4, 1e-5).passed
    assert "the largest |logit|, 212" in gates.parity("x", 0.47, 212.0, 1e-4, 1e-5).detail
    assert gates.parity("teacher_max_abs_diff", 1e-4, 0.0, 1e-4, 1e-5).passed  # the limit itself passes


def test_agreement_counts_images():
    assert gates.agreement(10, 10_000).limit == 10 and gates.agreement(10, 10_000).passed
    assert not gates.agreement(11, 10_000).passed
    assert gates.agreement(1, 300).limit == 1 and gates.agreement(1, 300).passed  # at least one near-tie
    assert gates.int8_agreement(100, 10_000).passed and not gates.int8_agreement(101, 10_000).passed
    i8 = gates.int8_parity(0.77, 16.8)
    assert i8.limit == pytest.approx(1.68) and i8.passed and i8.name == "max_abs_diff"


def test_accuracy_drop_and_its_absence():
    assert gates.accuracy_drop(94.23, 93.22, None) == []
    (g,) = gates.accuracy_drop(94.23, 93.22, 1.5)
    assert g.value == pytest.approx(1.01) and g.passed
    assert not gates.accuracy_drop(94.0, 92.4, 1.5)[0].passed
    assert gates.accuracy_drop(94.0, 92.5, 1.5)[0].passed


def test_min_speedup_takes_the_worst_batch_size():
    assert gates.min_speedup({"1": 2.4, "64": 2.8}, None) == []
    assert gates.min_speedup(None, 1.5) == []  # no baseline timed: nothing to compare
    (g,) = gates.min_speedup({"1": 2.4, "64": 1.4}, 1.5)
    assert g.value == 1.4 and not g.passed
    (g,) = gates.min_speedup({}, 1.5)  # no batch size both models ran at: a failure, not a pass
    assert g.value is None and not g.passed


def test_max_latency_per_batch_size():
    p50 = {"1": 0.143, "64": 7.4}
    got = gates.max_latency(p50, {1: 0.2, 64: 7.0, 8: 1.0})
    assert [(g.name, g.value, g.passed) for g in got] == [
        ("max_latency_ms[1]", 0.143, True), ("max_latency_ms[64]", 7.4, False),
        ("max_latency_ms[8]", None, False)]  # a batch size that was not timed fails
    assert gates.max_latency(p50, None) == []
    v = VerifyConfig(min_speedup=2.0, max_latency_ms={1: 0.15})
    assert [g.name for g in gates.latency_gates(v, {"1": 2.5}, p50)] == ["min_speedup", "max_latency_ms[1]"]


def test_the_int8_rule():
    ok = [Gate(name="max_accuracy_drop", limit=1.5, value=1.1, passed=True)]
    ships, why = gates.int8_ships(ok, {"1": 1.20, "64": 1.30}, {"1": [1.05, 1.4], "64": [1.2, 1.4]})
    assert ships and "at least 5% faster" in why
    # 5 % at the p50 is not enough when one round had int8 slower
    ships, why = gates.int8_ships(ok, {"1": 1.20}, {"1": [0.98, 1.4]})
    assert not ships and "batch size(s) 1" in why
    # faster in every round but under the 5 % margin
    ships, _ = gates.int8_ships(ok, {"1": 1.04}, {"1": [1.01, 1.06]})
    assert not ships
    # fast enough, but a gate of its own failed
    failed = [Gate(name="max_accuracy_drop", limit=1.5, value=2.0, passed=False)]
    ships, why = gates.int8_ships(failed, {"1": 1.5}, {"1": [1.3, 1.7]})
    assert not ships and why == "fp32 ships: int8 fails max_accuracy_drop"
