"""What verification returns, typed: the gates, parity, latency statistics and speed-ups, the int8 verdict, and
the whole of a distillation's verification (`Verification`), which jobs.distill puts into report.json as it is.

Pydantic models (report.models composes them into the reports): a misspelt or missing field fails where the
result is made, and the same classes give the JSON Schema that CI and the job service publish.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    # extra="forbid": a misspelt field is a bug in the code that makes the report, caught where it is made
    model_config = ConfigDict(extra="forbid")


class Gate(Section):
    """A verification gate: its limit, the measured value, whether it passed (a failed one makes the job exit 1)."""

    name: str
    limit: float | int | None
    value: float | int | None
    passed: bool
    detail: str | None = Field(None, description="what a person needs to see why it failed")


class LatencyStats(Section):
    """One model at one batch size, in milliseconds of single calls."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    min_ms: float
    runs: int
    throughput: float = Field(description="images/s at the p50")
    round_p50_ms: list[float] = Field(default_factory=list, description="the median of each alternating round")


class Parity(Section):
    """PyTorch against onnxruntime on the same real test images."""

    max_abs_diff: float
    per_batch: dict[str, float]
    argmax_agree: float
    scale: float = Field(description="the largest |logit|: the tolerance grows with it")
    images: int
    reference: str | None = None  # compress verify --reference: the checkpoint compared with
    quantized: bool | None = None  # an int8 model: int8's tolerance and top-1 agreement over the test split
    top1_differ: int | None = None


class Timing(Section):
    """How a latency measurement was made (read from the onnxruntime session that made it)."""

    provider: str
    threads: int | None
    graph_optimization: str
    io_binding: bool
    onnxruntime: str
    rounds: int


class ExportSection(Section):
    path: str
    opset: int
    dynamic_batch: bool
    exporter: str
    input_name: str
    output_name: str
    bytes: int
    max_abs_diff: float
    parity: Parity
    teacher_max_abs_diff: float
    teacher_parity: Parity
    teacher_path: str


class Latency(Timing):
    """Teacher and student timed in alternating rounds; speed-up = teacher p50 / student p50 per batch size."""

    teacher: dict[str, LatencyStats]
    student: dict[str, LatencyStats]
    speedup: dict[str, float]
    speedup_interval: dict[str, list[float]] = Field(description="the lowest and highest ratio of one round's medians")


class Int8(Section):
    path: str
    format: str
    activations: str
    weights: str
    per_channel: bool
    reduce_range: bool
    calibration_images: int
    bytes: int
    accuracy: float
    provider: str
    latency: dict[str, LatencyStats]
    fp32_latency: dict[str, LatencyStats]
    speedup: dict[str, float]
    speedup_vs_fp32: dict[str, float]
    speedup_vs_fp32_interval: dict[str, list[float]]
    gates: list[Gate]
    ship: bool
    decision: str


class Verification(Section):
    """What `verify.student.verify_student` returns: report.json's export, latency, int8, shipped and gates
    sections, and each model's accuracy in onnxruntime (for the report's model entries)."""

    export: ExportSection
    latency: Latency
    int8: Int8 | None = None
    shipped: str
    gates: list[Gate]
    onnx_accuracy: dict[str, float] = Field(description="teacher and student: top-1 % in onnxruntime")
