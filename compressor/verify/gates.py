"""Every gate, each a pure function of measured numbers and its limit: a named limit, the measured value and
whether it passed (verify.results.Gate). A run exits 1 when any gate fails (after every file is written);
report.json lists them all. `compress distill`, `compress verify` and the int8 decision use these and no other.

    parity           max |PyTorch - ONNX| <= max_abs_diff + parity_rtol x the largest |logit|
    int8_parity      an int8 model: max |fp32 - int8| <= INT8_PARITY_RTOL x the largest |logit|
    agreement        test images whose top-1 differs between PyTorch and onnxruntime <= max(1, 0.1 % of them)
    int8_agreement   ... between the fp32 checkpoint and its int8 model <= max(1, INT8_DISAGREEMENT of them)
    accuracy_drop    teacher - student (onnxruntime top-1, points) <= verify.max_accuracy_drop
    min_speedup      the smallest teacher p50 / student p50 over the batch sizes >= verify.min_speedup
    max_latency      the student's p50 at batch b <= verify.max_latency_ms[b] (a batch not timed fails)
    int8_ships       int8 passes its gates, and its p50 is >= INT8_MARGIN faster than fp32's at every batch size
                     with int8 the faster in every timing round
"""

from __future__ import annotations

from compressor.verify.results import Gate

AGREEMENT = 0.001  # PyTorch and onnxruntime: only near-ties may flip (0.1 % of the test images, at least 1)
# An int8 model computes other logits by design. Measured (2026-12-06) on the shipped WRN-16-2 teacher quantised by
# export.int8 (QDQ, 512 calibration images): max |fp32 - int8| 0.77 on the 10,000 test images with logits up to
# 16.8 (4.5 %), 0.24 on the 68 parity images (1.7 %); 36 of 10,000 top-1 classes differ (0.36 %). A broken
# quantisation (a wrong scale, a layer left out of calibration) is off by far more.
INT8_PARITY_RTOL = 0.1
INT8_DISAGREEMENT = 0.01
INT8_MARGIN = 0.05  # int8 ships only if its p50 is this much faster than fp32's (and faster in every round)


def parity(name: str, max_abs_diff: float, scale: float, atol: float, rtol: float) -> Gate:
    """fp32 rounding grows with the logits' scale: a correct export of a network with logits ~250 differs by more
    than one with logits ~10, so the tolerance is atol + rtol x the largest |logit|."""
    limit = atol + rtol * scale
    detail = (f"the limit is {atol:g} + {rtol:g} x the largest |logit|, {scale:.4g}; logits far beyond a healthy "
              "classifier's (tens) or a model that amplifies rounding make PyTorch and onnxruntime disagree although "
              "the export is faithful: a sign the training blew up")
    return Gate(name=name, limit=limit, value=max_abs_diff, passed=max_abs_diff <= limit, detail=detail)


def int8_parity(max_abs_diff: float, scale: float) -> Gate:
    limit = INT8_PARITY_RTOL * scale
    return Gate(name="max_abs_diff", limit=limit, value=max_abs_diff, passed=max_abs_diff <= limit,
                detail=f"an int8 model: the limit is {INT8_PARITY_RTOL:g} x the largest |logit|, {scale:.4g}")


def agreement_limit(images: int, fraction: float = AGREEMENT) -> int:
    return max(1, int(images * fraction))


def agreement(differ: int, images: int) -> Gate:
    limit = agreement_limit(images)
    return Gate(name="onnx_accuracy_agreement", limit=limit, value=differ, passed=differ <= limit,
                detail=f"test images whose top-1 differs between PyTorch and onnxruntime, of {images}")


def int8_agreement(differ: int, images: int) -> Gate:
    limit = agreement_limit(images, INT8_DISAGREEMENT)
    return Gate(name="int8_agreement", limit=limit, value=differ, passed=differ <= limit,
                detail=f"test images whose top-1 differs from the fp32 checkpoint's, of {images}")


def accuracy_drop(teacher: float, student: float, limit: float | None) -> list[Gate]:
    if limit is None:
        return []
    drop = teacher - student
    return [Gate(name="max_accuracy_drop", limit=limit, value=drop, passed=drop <= limit)]


def min_speedup(speedup: dict[str, float] | None, limit: float | None) -> list[Gate]:
    """`speedup` None: no baseline was timed (no gate); empty: no batch size both models run at (a failure)."""
    if limit is None or speedup is None:
        return []
    worst = min(speedup.values()) if speedup else None
    return [Gate(name="min_speedup", limit=limit, value=worst, passed=worst is not None and worst >= limit)]


def max_latency(p50: dict[str, float], limits: dict[int, float] | None) -> list[Gate]:
    """p50: the student's p50 in ms by batch size; a limit at a batch size that was not timed fails."""
    gates = []
    for b, limit in (limits or {}).items():
        value = p50.get(str(b))
        gates.append(Gate(name=f"max_latency_ms[{b}]", limit=limit, value=value,
                          passed=value is not None and value <= limit))
    return gates


def latency_gates(v, speedup: dict[str, float] | None, p50: dict[str, float]) -> list[Gate]:
    """The recipe's latency gates (verify.min_speedup, verify.max_latency_ms)."""
    return [*min_speedup(speedup, v.min_speedup), *max_latency(p50, v.max_latency_ms)]


def int8_ships(gates: list[Gate], vs_fp32: dict[str, float], vs_fp32_interval: dict[str, list[float]]
               ) -> tuple[bool, str]:
    """Whether the int8 model ships, and why, from its own gates and its speed-up over fp32 (same provider,
    alternating rounds): ships when every gate passes and at every batch size the p50 ratio is >= 1 + INT8_MARGIN
    and int8 was the faster in every round (the interval's low end above 1)."""
    faster = {b: vs_fp32[b] >= 1 + INT8_MARGIN and vs_fp32_interval[b][0] > 1 for b in vs_fp32}
    if not all(faster.values()):
        slower = [b for b, f in faster.items() if not f]
        return False, (f"fp32 ships: int8 is not faster than fp32 beyond the noise ({INT8_MARGIN:.0%} at the p50 and "
                       f"in every round, on the CPU provider) at batch size(s) {', '.join(slower)}")
    failed = [g.name for g in gates if not g.passed]
    if failed:
        return False, "fp32 ships: int8 fails " + ", ".join(failed)
    return True, (f"int8 passes every gate and its p50 is at least {INT8_MARGIN:.0%} faster than fp32's (same "
                  "provider), int8 the faster in every timing round, at every batch size")
