"""Gates: a named limit, the measured value, and whether it passed. A run exits 1 when any gate fails (after
every file is written); report.json lists them all."""

from __future__ import annotations


def gate(name: str, limit, value, passed: bool, detail: str | None = None) -> dict:
    """`detail`: what a person needs to see why it failed (the parity gates: the logits' scale)."""
    g = {"name": name, "limit": limit, "value": value, "passed": bool(passed)}
    if detail:
        g["detail"] = detail
    return g


def latency_gates(v, latency: dict) -> list[dict]:
    gates = []
    if v.min_speedup is not None and "teacher" in latency:
        if latency.get("speedup"):
            worst = min(latency["speedup"].values())
            gates.append(gate("min_speedup", v.min_speedup, worst, worst >= v.min_speedup))
        else:  # no batch size both models run at
            gates.append(gate("min_speedup", v.min_speedup, None, False))
    for b, limit in (v.max_latency_ms or {}).items():
        p50 = latency["student"].get(str(b), {}).get("p50_ms")
        if p50 is None:
            gates.append(gate(f"max_latency_ms[{b}]", limit, None, False))  # not measured: batch not in batch_sizes
        else:
            gates.append(gate(f"max_latency_ms[{b}]", limit, p50, p50 <= limit))
    return gates
