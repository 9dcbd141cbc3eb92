"""Latency through onnxruntime: models timed in alternating rounds, percentiles of single calls, and the speed-up
of one over another with the rounds' spread as its interval.

Everything the report states about a measurement (provider, threads, graph optimisation level) is read from the
`Session` it was made with (`latency_meta`), so the numbers and their conditions cannot drift apart.

    lat = measure_latencies({"teacher": t, "student": s}, [1, 64], (1, 28, 28))   # {role: {"1": LatencyStats}}
    ratio, interval = speedups(lat["teacher"], lat["student"])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import onnxruntime as ort

from compressor.export.sessions import CUDA, Session
from compressor.verify.results import LatencyStats


def _runner(session: Session, batch: np.ndarray) -> Callable[[], object]:
    """A zero-argument call that runs the model once on `batch`, as the provider is meant to be used.

    On CUDA the input is copied to the GPU once and the output stays there (IO binding), so the timing
    is the model and not host<->device copies; synchronize_outputs makes each call wait for the GPU.
    """
    if session.provider != CUDA:
        feed = {session.input_name: batch}
        return lambda: session.inner.run([session.output_name], feed)
    binding = session.inner.io_binding()
    binding.bind_ortvalue_input(session.input_name, ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))
    binding.bind_output(session.output_name, "cuda", 0)

    def run() -> None:
        session.inner.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return run


def measure_latency(
    session: Session,
    batch_sizes: Iterable[int],
    input_shape: tuple[int, int, int],
    *,
    warmup: int = 10,  # first runs allocate memory and pick kernels; they are not the steady state
    min_runs: int = 100,  # enough for a stable p99
    min_seconds: float = 1.0,  # and long enough to span scheduler and frequency noise
    seed: int = 0,
    rounds: int = 1,
) -> dict[str, LatencyStats]:
    """Time one forward pass per batch size; returns {"<batch>": LatencyStats (p50_ms, p90_ms, p99_ms, ...)}.

    Inputs are fixed seeded random images of `input_shape` (C, H, W): a CNN's cost does not depend on
    pixel values, and a fixed input makes runs comparable. Each run is timed alone with perf_counter,
    so percentiles are of single calls. Throughput (images/s) is derived from the median.
    """
    return measure_latencies({"model": session}, batch_sizes, input_shape, warmup=warmup, min_runs=min_runs,
                             min_seconds=min_seconds, seed=seed, rounds=rounds)["model"]


def measure_latencies(
    sessions: dict[str, Session],
    batch_sizes: Iterable[int],
    input_shape: tuple[int, int, int],
    *,
    warmup: int = 10,
    min_runs: int = 100,
    min_seconds: float = 1.0,
    seed: int = 0,
    rounds: int = 5,
) -> dict[str, dict[str, LatencyStats]]:
    """Time several models in alternating rounds: {role: {"<batch>": LatencyStats}}, with `round_p50_ms` the
    median of each round.

    Timing one model entirely before the other lets clock drift, turbo and neighbours bias their ratio; in
    rounds (A B, B A, A B, ...) both meet the same conditions, and the rounds' spread is the ratio's interval
    (`speedups`). Each model gets `min_runs` calls and `min_seconds` per batch size in all, split over the rounds.
    """
    rng = np.random.default_rng(seed)
    roles = list(sessions)
    per_round_runs = max(1, -(-min_runs // rounds))
    per_round_seconds = min_seconds / rounds
    results: dict[str, dict[str, LatencyStats]] = {role: {} for role in roles}
    for b in batch_sizes:
        batch = rng.standard_normal((b, *input_shape), dtype=np.float32)  # (B, C, H, W)
        runners = {role: _runner(sessions[role], batch) for role in roles}
        for run in runners.values():
            for _ in range(warmup):
                run()
        times: dict[str, list[float]] = {role: [] for role in roles}
        medians: dict[str, list[float]] = {role: [] for role in roles}
        for r in range(rounds):
            for role in roles if r % 2 == 0 else roles[::-1]:
                run, got = runners[role], []
                run()  # one untimed call: the other model ran last and left its data in the caches
                start = time.perf_counter()
                while len(got) < per_round_runs or time.perf_counter() - start < per_round_seconds:
                    t0 = time.perf_counter()
                    run()
                    got.append(time.perf_counter() - t0)
                times[role] += got
                medians[role].append(float(np.median(got) * 1000.0))
        for role in roles:
            results[role][str(b)] = _stats(np.array(times[role]) * 1000.0, b, medians[role])
    return results


def _stats(ms: np.ndarray, b: int, round_medians: list[float]) -> LatencyStats:
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return LatencyStats(p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99), mean_ms=float(ms.mean()),
                        stdev_ms=float(ms.std(ddof=1)) if len(ms) > 1 else 0.0, min_ms=float(ms.min()), runs=len(ms),
                        throughput=float(b / (p50 / 1000.0)), round_p50_ms=round_medians)


def speedups(slow: dict[str, LatencyStats], fast: dict[str, LatencyStats]
             ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """`slow`'s p50 over `fast`'s per batch size, and its interval: the lowest and highest ratio of one round's
    medians (both measured by `measure_latencies` in the same rounds). The interval is the paired rounds' spread,
    not a bound: the pooled p50s' ratio can lie just outside it when the rounds disagree."""
    ratio, interval = {}, {}
    for b in fast:
        if b not in slow:
            continue
        ratio[b] = slow[b].p50_ms / fast[b].p50_ms
        rounds = [t / s for t, s in zip(slow[b].round_p50_ms, fast[b].round_p50_ms)]
        interval[b] = [min(rounds), max(rounds)] if rounds else [ratio[b], ratio[b]]
    return ratio, interval


def latency_meta(session: Session) -> dict:
    """The conditions of a latency measurement, for the report next to the numbers."""
    return {
        "provider": session.provider,
        "threads": session.threads,
        "graph_optimization": session.graph_optimization,
        "io_binding": session.provider == CUDA,
        "onnxruntime": ort.__version__,
    }
