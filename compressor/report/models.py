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

from compressor.students.results import LatencySearch, SearchCandidate
from compressor.verify.results import ExportSection, Gate, Int8, Latency, LatencyStats, Parity, Section, Timing

__all__ = ["AblationTable", "DistillReport", "ExportSection", "Gate", "Int8", "Latency", "LatencySearch",
           "LatencyStats", "Parity", "SCHEMAS", "SearchCandidate", "StudentSizing", "VerifyReport"]


class StudentSizing(BaseModel):
    """How the student was sized or grown (students.build: `how`, `reason`, the targets, ...; free-form but for
    `search`, the latency search's every candidate as measured)."""

    model_config = ConfigDict(extra="allow")
    search: LatencySearch | None = Field(None, description="a latency target: every candidate measured, the "
                                         "chosen one marked")


class ModelEntry(Section):
    arch: str
    params: int
    flops: int
    accuracy: float = Field(description="top-1 % on the test split, PyTorch")
    onnx_accuracy: float | None = Field(None, description="top-1 % on the test split, onnxruntime")
    source: str | None = None  # the teacher's file format
    path: str | None = None  # the teacher's file
    sizing: StudentSizing | None = None  # how the student was sized or grown (students.build)


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


class BatchNormRefresh(Section):
    """The student's BatchNorm statistics recomputed after training because too few steps had refreshed them."""

    stale_fraction: float = Field(description="the largest share of a BatchNorm's running statistics still from "
                                  "before training: (1 - momentum) ** steps")
    steps: int
    images: int = Field(description="training images (un-augmented) the statistics were recomputed on")


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
    bn_recalibrated: BatchNormRefresh | None = Field(None, description="set when the student's BatchNorm statistics "
                                                     "were recomputed after training (models.batchnorm)")
    history: list[dict[str, Any]] = Field(description="metrics.jsonl's rows, one per epoch")


class Distributed(Section):
    world_size: int
    backend: str | None
    global_batch: int
    per_rank_batch: int
    lr: float
    sync_bn: bool


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
