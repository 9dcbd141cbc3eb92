"""The typed results of compressor's jobs: what `compress distill` writes as report.json (`DistillReport`), what
`compress verify` writes (`VerifyReport`), and `compress ablate`'s table (`AblationTable`).

These pydantic models are the contract CI reads (../shared/CONTRACT.md's report.json keys), built by the stages
from their own typed results (verify.* returns its sections as models), read back by the figures, the markdown and
the ablation, and published as JSON Schema (`compress report schema`) and in the job service's OpenAPI document.
Adding a field is adding it here; a report that does not fit fails where it is made, not in a CI script.

One vocabulary: `teacher` / `student` in a distillation's report; `model` / `baseline` in `compress verify`'s, in
every section (accuracy, inputs, batch sizes and latency alike).
"""

from __future__ import annotations

from typing import Any

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


class ModelEntry(Section):
    arch: str
    params: int
    flops: int
    accuracy: float = Field(description="top-1 % on the test split, PyTorch")
    onnx_accuracy: float | None = Field(None, description="top-1 % on the test split, onnxruntime")
    source: str | None = None  # the teacher's file format
    path: str | None = None  # the teacher's file
    sizing: dict[str, Any] | None = None  # how the student was sized or grown (students.build)


class DataSection(Section):
    name: str
    train: int
    val: int
    test: int
    classes: list[str]
    mean: list[float]
    std: list[float]
    loader: str
    loader_reason: str
    normalisation: str
    preprocess: dict[str, Any] = Field(description="how an image becomes the models' input (core.preprocess)")


class Pair(Section):
    teacher: str
    student: str
    shape: list[int]
    teacher_shape: list[int] | None = None


class Precision(Section):
    setting: str
    dtype: str
    reason: str


class Distillation(Section):
    methods: list[str]
    pairs: list[Pair]
    beta: float | None
    epochs: int
    best_epoch: int
    val_accuracy: float | None
    train_seconds: float
    images_per_second: float
    batch_size: int
    lr: float
    resumed_from_epoch: int | None
    first_step_seconds: float | None
    amp: Precision
    history: list[dict[str, Any]] = Field(description="metrics.jsonl's rows, one per epoch")


class Distributed(Section):
    world_size: int
    backend: str | None
    global_batch: int
    per_rank_batch: int
    lr: float
    sync_bn: bool


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


class Environment(Section):
    python: str
    torch: str
    onnx: str
    onnxruntime: str
    device: str
    cpu: str
    cpu_count: int | None
    torch_threads: int
    onnxruntime_provider: str | None = None


class DistillReport(Section):
    """report.json of `compress distill` (and of a job of the service)."""

    passed: bool = Field(description="every gate passed")
    recipe: str
    teacher: ModelEntry
    student: ModelEntry
    data: DataSection
    distillation: Distillation
    distributed: Distributed
    export: ExportSection
    latency: Latency
    int8: Int8 | None = None
    shipped: str = Field(description="the file to deploy: student.onnx, or student.int8.onnx where int8 ships")
    gates: list[Gate]
    environment: Environment
    wall_seconds: float
    figures: dict[str, str] = Field(default_factory=dict, description="title -> path relative to the run folder")


class VerifyLatency(Timing):
    model: dict[str, LatencyStats]
    baseline: dict[str, LatencyStats] | None = None
    speedup: dict[str, float] | None = None
    speedup_interval: dict[str, list[float]] | None = None
    skipped_batch_sizes: dict[str, str] = Field(default_factory=dict)


class VerifyReport(Section):
    """The JSON `compress verify` writes."""

    model: str
    baseline: str | None
    reference: str | None
    accuracy: dict[str, float] = Field(description="model (and baseline): top-1 % in onnxruntime")
    test_images: int
    input: dict[str, dict[str, Any]] = Field(description="how each model was fed (its own metadata, or the data's)")
    batch_sizes: dict[str, dict[str, Any]] = Field(description="the batch sizes each model accepts and refuses")
    latency: VerifyLatency
    parity: Parity | None = None
    gates: list[Gate]
    passed: bool
    environment: Environment


class AblationRun(Section):
    dir: str
    seed: int
    reused: bool
    failed_gates: list[str]
    error: float
    params: int
    arch: str
    latency_batch: str
    latency_p50_ms: float
    teacher_latency_p50_ms: float
    train_seconds: float
    methods: list[str]
    teacher: dict[str, Any]


class AblationCell(Section):
    method: str
    label: str
    init: str | None
    runs: list[AblationRun]
    error_mean: float | None
    error_std: float | None
    params: int | None
    latency_p50_ms: float | None
    train_seconds: float | None


class AblationTable(Section):
    """ablation.json of `compress ablate`: every method x seed (x init), error mean and sample std."""

    recipe: str
    recipe_path: str
    overrides: list[str]
    teacher_path: str
    epochs: int
    seeds: list[int]
    train_images: int | None
    test_images: int | None
    teacher: dict[str, Any]
    inits: dict[str, list[str]] | None
    methods: list[AblationCell]


SCHEMAS = {"distill": DistillReport, "verify": VerifyReport, "ablation": AblationTable}
