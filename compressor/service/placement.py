"""Where a job may run: the Ray resources it asks for, and whether the cluster can give them now.

A job asks for CPUs (the server's --cpus-per-job unless the request says), a GPU when its recipe runs on cuda,
memory when the request names it (Ray's `memory` resource, bytes) and, for a named worker kind, one unit of the
Ray custom resource of that name: a node started with `ray start --resources '{"a100": 2}'` runs two `a100` jobs
at once and a job of kind `a100` runs nowhere else.

The dispatcher starts a queued job only when (1) some alive node has everything it asks for — else it stays
queued, saying which resource no node has — and (2) the cluster's totals, less what the running jobs of every
server ask for, still hold it — else it stays queued, saying what is busy. Ray then places the task on a node that
fits (while a fragmented cluster makes it wait there, the job reads `starting a worker`).
"""

from __future__ import annotations

from dataclasses import dataclass

BASIC = ("CPU", "GPU", "memory")
GIB = 1024**3


def needs_of(cpus: float, gpus: float, memory_gb: float | None = None, worker: str | None = None) -> dict[str, float]:
    needs = {"CPU": float(cpus)}
    if gpus:
        needs["GPU"] = float(gpus)
    if memory_gb:
        needs["memory"] = float(int(memory_gb * GIB))
    if worker:
        needs[worker] = 1.0
    return needs


def custom(needs: dict[str, float]) -> dict[str, float]:
    """The custom resources (worker kinds) of a job's needs."""
    return {k: v for k, v in needs.items() if k not in BASIC}


def describe(needs: dict[str, float]) -> str:
    """`1 CPU, 1 GPU, 4 GiB memory, worker kind a100`"""
    parts = []
    for key, value in needs.items():
        if key == "memory":
            parts.append(f"{value / GIB:g} GiB memory")
        elif key in ("CPU", "GPU"):
            parts.append(f"{value:g} {key}")
        else:
            parts.append(f"worker kind {key}")
    return ", ".join(parts)


@dataclass
class Cluster:
    """The alive nodes' total resources, as Ray reports them."""

    nodes: list[dict[str, float]]

    @classmethod
    def from_ray(cls) -> Cluster:
        import ray

        return cls([dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")])

    def total(self, key: str) -> float:
        return sum(node.get(key, 0.0) for node in self.nodes)

    def has(self, key: str) -> bool:
        return any(node.get(key, 0.0) > 0 for node in self.nodes)

    def feasible(self, needs: dict[str, float]) -> bool:
        return any(all(node.get(k, 0.0) >= v for k, v in needs.items()) for node in self.nodes)

    def infeasible_reason(self, needs: dict[str, float]) -> str | None:
        """Why no node can ever run the job as the cluster stands, or None."""
        if self.feasible(needs):
            return None
        if needs.get("GPU") and not self.has("GPU"):
            return "waiting for a GPU worker: no node of the Ray cluster has a GPU now"
        for kind in custom(needs):
            if not self.has(kind):
                return (f"waiting for a node of kind {kind} (Ray resource {kind!r}): no node of the Ray cluster has "
                        "it now")
        return (f"waiting for a node with {describe(needs)}: no node of the Ray cluster has all of that "
                f"({len(self.nodes)} node(s))")

    def busy_reason(self, needs: dict[str, float], used: dict[str, float], running: int) -> str | None:
        """Why the job must wait for running jobs to end (what `used` holds of the totals), or None."""
        for key, want in needs.items():
            total = self.total(key)
            free = total - used.get(key, 0.0)
            if want <= free + 1e-9:
                continue
            if key == "GPU":
                return f"waiting for a GPU worker: all {total:g} GPU(s) are busy"
            if key == "CPU":
                return (f"waiting for a worker: it needs {want:g} CPU(s), {max(free, 0):g} of {total:g} free "
                        f"({running} job(s) running)")
            if key == "memory":
                return (f"waiting for memory: it needs {want / GIB:g} GiB, {max(free, 0) / GIB:.1f} of "
                        f"{total / GIB:.1f} GiB free ({running} job(s) running)")
            return f"waiting for a node of kind {key}: all {total:g} of its slot(s) are busy"
        return None


def add(used: dict[str, float], needs: dict[str, float]) -> None:
    for key, value in needs.items():
        used[key] = used.get(key, 0.0) + value
