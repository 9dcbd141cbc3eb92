"""What a latency search reports (report.json's `student.sizing.search`), apart from the search itself so that
reading a report (the service, `compress report schema`) does not import torch."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a bug where the report is made


class RankedBlock(_Model):
    name: str
    loss_rise: float = Field(description="the teacher's cross-entropy without this block, minus with it")


class SearchCandidate(_Model):
    """One candidate of a latency search, as measured."""

    name: str = Field(description="depth/width/round_to, e.g. 'd2 w0.40 r4': 2 blocks removed, 40% of channels")
    removed_blocks: list[str]
    width_ratio: float = Field(description="the share of channels removed (0 = all kept)")
    round_to: int | None
    params: int
    flops: int
    p50_ms: float | None = Field(None, description="onnxruntime p50 at the target's batch size")
    teacher_p50_ms: float | None = None
    latency_ratio: float | None = Field(None, description="p50 / the teacher's p50, in the same alternating rounds")
    latency_ratio_interval: list[float] | None = None
    latency_ratio_again: float | None = Field(None, description="the best candidates are timed once more before "
                                              "one is chosen: that measurement")
    accuracy: float | None = Field(None, description="top-1 % right after pruning and BatchNorm recalibration")
    max_abs_diff: float | None = Field(None, description="PyTorch vs onnxruntime logits")
    parity_ok: bool | None = None
    meets: bool = Field(description="meets every target and passes parity")
    why_not: str | None = Field(None, description="the target it misses, or why it was not timed")
    chosen: bool = False


class LatencySearch(_Model):
    """report.json's `student.sizing.search`: what a latency search measured and chose."""

    target: float | None = Field(description="student.latency: p50 as a fraction of the teacher's")
    target_ms: float | None = Field(description="student.latency_ms")
    batch: int
    provider: str | None
    threads: int | None
    searched: str = Field(description="which candidates were considered: width, depth or both")
    blocks: list[RankedBlock] = Field(description="the removable blocks, least missed first")
    candidates: list[SearchCandidate]
    chosen: str | None
    seconds: float
    calibration_images: int
    accuracy_images: int
    accuracy_on: str = Field(description="the split the candidates' accuracy is measured on")
