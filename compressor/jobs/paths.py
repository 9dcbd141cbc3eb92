"""Every file a job writes, by name: `RunPaths` (a `compress distill` folder) and `CheckpointPaths` (a `compress
train` checkpoint and the files beside it), each with its run record (core.runrecord), its lock, its training state
(what --resume reads) and where an earlier run's files wait while --force replaces them (jobs.outdir)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compressor.core import runlock
from compressor.core.runrecord import RECORD_NAME

FINISHED_MARKER = "report.json"
# what `compress distill` writes into --out (and figures/)
RUN_FILES = ("train_state.pt", "metrics.jsonl", "student.pt", "student.onnx", "teacher.onnx", "student.int8.onnx",
             "report.json", "report.md")
FIGURE_FILES = ("attention.png", "curves.png", "latency.png", "search.png")


@dataclass(frozen=True)
class RunPaths:
    """Every file of a `compress distill` run folder."""

    out: Path

    @property
    def folder(self) -> Path:
        return self.out

    @property
    def names(self) -> tuple[str, ...]:
        return (*RUN_FILES, *(f"figures/{f}" for f in FIGURE_FILES))

    @property
    def state(self) -> Path:
        return self.out / "train_state.pt"

    @property
    def metrics(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def finished(self) -> Path:
        return self.out / FINISHED_MARKER

    @property
    def record(self) -> Path:
        return self.out / RECORD_NAME

    @property
    def lock(self) -> Path:
        return self.out / runlock.LOCK_NAME

    @property
    def previous(self) -> Path:
        return self.out / ".compressor-previous"

    def __truediv__(self, name: str) -> Path:
        return self.out / name


@dataclass(frozen=True)
class CheckpointPaths:
    """`compress train`'s checkpoint and the files beside it: its training state and its metrics."""

    out: Path

    @property
    def folder(self) -> Path:
        return self.out.parent

    @property
    def names(self) -> tuple[str, ...]:
        return (self.out.name, self.state.name, self.metrics.name)

    @property
    def state(self) -> Path:
        return self.out.with_name(self.out.name + ".state")

    @property
    def metrics(self) -> Path:
        return self.out.with_name(self.out.stem + ".metrics.jsonl")

    @property
    def finished(self) -> Path:
        return self.out

    @property
    def record(self) -> Path:
        return self.folder / f".{self.out.name}{RECORD_NAME}"

    @property
    def lock(self) -> Path:
        return self.folder / f".{self.out.name}.lock"

    @property
    def previous(self) -> Path:
        return self.folder / f".{self.out.name}.compressor-previous"
