"""The recipe schema: one pydantic model per YAML section (unknown keys are errors), each key with its default
and a description (`compress recipe schema` prints them).

Over 300 lines on purpose: the whole schema in one file reads top to bottom like a recipe does (data, teacher,
student, train, distill, export, verify); splitting it would scatter the keys a user looks up together.
Reading, overriding and validating a file: recipe.load.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

PositiveInt = Annotated[int, Field(gt=0)]


class Strict(BaseModel):
    # unknown keys are typos; an infinite or NaN number (YAML .inf, 1e400) is never a meaningful setting
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataConfig(Strict):
    name: Literal["fashion_mnist", "cifar10", "cifar100", "imagefolder"] = "fashion_mnist"
    root: str | None = Field(None, description="dataset folder; null = $COMPRESSOR_DATA or ./data")
    limit_train: PositiveInt | None = Field(None, description="use at most this many training images (smoke runs)")
    limit_test: PositiveInt | None = Field(None, description="use at most this many test images (smoke runs)")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="held out of train to choose the best epoch")
    pad: int = Field(4, ge=0, le=64, description="reflect padding before the random crop (0 = no crop)")
    flip: bool = Field(True, description="random horizontal flip")
    image_size: PositiveInt | None = Field(
        None, description="the square size the models see; null = the dataset's own (28 Fashion-MNIST, 32 CIFAR) or 224 "
        "for an imagefolder (decoded as Resize(image_size / 0.875) + CenterCrop(image_size)); a built-in dataset at "
        "another size is resized batch by batch (bilinear, antialiased), so a 224 px teacher distils on Fashion-MNIST")
    channels: Literal[1, 3] | None = Field(
        None, description="1 = grey-scale, 3 = RGB; null = the dataset's own (1 Fashion-MNIST, 3 CIFAR and an "
        "imagefolder); 3 on Fashion-MNIST repeats its grey channel into R, G and B (a 3-channel teacher distils on it)")
    loader: Literal["auto", "memory", "stream"] = Field(
        "auto", description="memory: decode the images once and hold them as tensors; stream: decode each batch in "
        "DataLoader workers (an ImageFolder); auto: memory when the decoded images fit memory_budget_gb and the "
        "augmentation allows, else stream")
    memory_budget_gb: float = Field(4.0, gt=0, description="auto loader: the most decoded images held in memory")
    workers: int | None = Field(None, ge=0, description="stream: DataLoader worker processes; null = min(8, CPUs)")
    augment: Literal["auto", "pad_crop", "random_resized_crop"] = Field(
        "auto", description="training augmentation of an ImageFolder: pad_crop (the paper's reflect-pad + random crop "
        "+ flip), random_resized_crop (+ flip; ImageNet-style, stream only); auto: pad_crop up to 64 px, else "
        "random_resized_crop")
    mean: list[float] | None = Field(None, description="normalisation; null = the teacher's own where it records it "
                                     "(a compressor checkpoint, timm's pretrained_cfg), else the dataset's")
    std: list[float] | None = Field(None, description="normalisation, with mean")

    @model_validator(mode="after")
    def _mean_with_std(self):
        if (self.mean is None) != (self.std is None):
            raise ValueError("data.mean and data.std: give both or neither")
        if self.mean is not None and (len(self.mean) != len(self.std) or min(self.std) <= 0):
            raise ValueError("data.mean and data.std: one value per channel each, std > 0")
        return self


def _known_arch(name: str | None, pruned: bool = False) -> str | None:
    """A model name the registry can build (registered, torchvision, timm:NAME), checked without building it;
    with `pruned`, also `<name>-pruned` (how distill names a student grown from the teacher)."""
    if name is None:
        return name
    from compressor.models import check_arch  # here, not at the top: the registry imports torchvision

    base = name[: -len("-pruned")] if pruned and name.endswith("-pruned") else name
    problem = check_arch(base)
    if problem:
        raise ValueError(problem)
    return name


DEFAULT_TEACHER_ARCH = "wrn-16-2"


def teacher_arch_given(recipe: "Recipe") -> bool:
    """Whether the recipe's teacher.arch was written (in the file or a --set) rather than left at its default:
    only a written one must match a compressor checkpoint's own architecture."""
    return "arch" in recipe.teacher.model_fields_set


class TeacherConfig(Strict):
    arch: str = Field(DEFAULT_TEACHER_ARCH, description="architecture of a state_dict teacher and of `compress train`'s "
                      "(registered, torchvision or timm:NAME); a compressor checkpoint names its own, which must "
                      "be this one when it is given")
    epochs: PositiveInt | None = Field(None, description="`compress train` epochs; null = train.epochs")

    @field_validator("arch")
    @classmethod
    def _arch_exists(cls, v):
        return _known_arch(v, pruned=True)


def _amount(v, what: str, examples: str, units: str):
    """A fraction of the teacher's (0 < v < 1: 1 would be the teacher itself) or a count (>= 1000, or written with a
    unit such as 200k)."""
    if v is None:
        return v
    if isinstance(v, (int, float)):
        if not 0 < v < 1 and v < 1000:
            raise ValueError(f"a fraction must be in (0, 1) (1 is the teacher itself); a count must be >= 1000 (or "
                             f"written {examples})")
        return float(v)
    if not re.fullmatch(rf"\s*\d+(\.\d+)?\s*[{units}]?\s*", v):
        raise ValueError(f"{v!r} is neither a fraction (0.25) nor a {what} ({examples})")
    return v.strip()


class StudentConfig(Strict):
    arch: str | None = Field(None, description="registered architecture, e.g. wrn-16-1")
    size: Union[float, str, None] = Field(
        None, description="instead of arch: a fraction of the teacher's parameters (0.25) or a count (200k, 1.5M)"
    )

    @field_validator("arch")
    @classmethod
    def _arch_exists(cls, v):
        return _known_arch(v)

    @field_validator("size")
    @classmethod
    def _size(cls, v):
        return _amount(v, "parameter count", "200k, 1.5M", "kKmM")

    flops: Union[float, str, None] = Field(
        None, description="init teacher: also at most this many FLOPs per image: a fraction of the teacher's (0.25) "
        "or a count (40M, 1.5G); with student.size both limits hold, alone it sizes the student by FLOPs"
    )
    init: Literal["auto", "scratch", "teacher"] = Field(
        "auto", description="teacher: the teacher with channels pruned to student.size (kept names, one-to-one "
        "attention pairs); scratch: a fresh network of the teacher's family; auto: teacher when the student is "
        "sized and the teacher can be pruned, else scratch (measured: a grown student was 5.9 points ahead of a "
        "scratch one at the demo's budget, 3 seeds, docs/RESULTS.md)"
    )
    criterion: Literal["taylor", "magnitude"] = Field(
        "taylor", description="init teacher: which channels go (first-order Taylor from a few batches, or weight norm)"
    )
    keep_stem: bool = Field(True, description="init teacher: leave the first convolution's channels unpruned")
    allocation: Literal["uniform", "global"] = Field(
        "global", description="init teacher: remove the same fraction of every channel group (uniform), or rank all "
        "groups' channels together by normalised importance (global)"
    )
    round_to: PositiveInt | None = Field(
        4, description="init teacher: keep channel counts multiples of this; onnxruntime's CPU kernels ran a WRN with "
        "15/31/63 or 14/30/62 channels 1.7x slower than one with 12/28/60 (docs/RESULTS.md); null = any count"
    )
    calibration_images: PositiveInt = Field(
        2048, description="init teacher: training images for the Taylor scores and the BatchNorm recalibration"
    )

    latency: float | None = Field(
        None, description="init teacher: the student's p50 latency as a fraction of the teacher's (0.33 = 3x faster), "
        "measured on the deployment runtime (onnxruntime with verify's provider and threads, in alternating rounds "
        "against the teacher) at student.latency_batch; candidates pruned in width and depth are exported and timed, "
        "and the one that meets every target with the most accuracy right after pruning is distilled")
    latency_ms: float | None = Field(
        None, description="init teacher: the student's p50 latency in milliseconds at student.latency_batch "
        "(measured as student.latency is); with student.latency / size / flops every target holds")
    latency_batch: PositiveInt = Field(1, description="the batch size student.latency and latency_ms are measured at")
    search: Literal["both", "width", "depth"] = Field(
        "both", description="a latency target: which candidates are measured: channels removed (width), whole "
        "residual blocks removed (depth: blocks whose input and output shapes match become identities, the ones "
        "the teacher's loss misses least first), or both")

    @field_validator("flops")
    @classmethod
    def _flops(cls, v):
        return _amount(v, "FLOPs count", "40M, 1.5G", "kKmMgG")

    @field_validator("latency")
    @classmethod
    def _latency(cls, v):
        if v is not None and not 0 < v < 1:
            raise ValueError(f"{v:g} is not a fraction of the teacher's latency in (0, 1): 0.33 asks for a student "
                             "3x faster than the teacher (use student.latency_ms for milliseconds)")
        return v

    @field_validator("latency_ms")
    @classmethod
    def _latency_ms(cls, v):
        if v is not None and v <= 0:
            raise ValueError(f"{v:g} ms: a latency target must be above 0 ms")
        return v

    def latency_target(self) -> bool:
        return self.latency is not None or self.latency_ms is not None

    @model_validator(mode="after")
    def _one_of(self):
        sized = self.size is not None or self.flops is not None or self.latency_target()
        if self.arch and sized:
            raise ValueError("set either student.arch or student.size / student.flops / student.latency, not both")
        if not self.arch and not sized:
            raise ValueError("set student.arch (e.g. wrn-16-1), student.size (e.g. 0.25) or student.latency "
                             "(e.g. 0.33)")
        if self.flops is not None and self.init == "scratch":
            raise ValueError("student.flops sizes a student grown from the teacher; student.init: scratch sizes by "
                             "parameters (student.size)")
        if self.latency_target() and self.init == "scratch":
            raise ValueError("student.latency sizes a student grown from the teacher (pruned candidates are timed); "
                             "student.init: scratch sizes by parameters (student.size)")
        if self.arch and self.init == "teacher":
            raise ValueError("student.init: teacher prunes the teacher down to student.size; give student.size "
                             "instead of student.arch (or student.init: scratch)")
        return self


class TrainConfig(Strict):
    epochs: PositiveInt = 3
    batch_size: PositiveInt = 128
    lr: float = Field(0.1, gt=0, description="initial SGD learning rate")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["multistep", "step", "cosine", "constant"] = Field(
        "cosine", description="learning-rate decay, stepped every iteration: cosine to 0; multistep (or step, the "
        "same): lr *= gamma at each of train.milestones (required); constant"
    )
    milestones: list[PositiveInt] = Field(default_factory=list, validate_default=True,
                                          description="multistep: epochs where lr *= gamma")
    gamma: float = Field(0.2, gt=0, le=1)
    channels_last: bool = True
    compile: bool = Field(
        False, description="torch.compile the student's and the teacher's forward: faster steps after a 10-60 s "
        "compile (measured +11% on a 2-core CPU), worth it for runs longer than a few minutes; not with grad_at"
    )
    amp: Literal["auto", "off", "bf16", "fp16"] | bool = Field(
        "auto", description="training precision: auto = bf16 on CUDA when supported and on CPUs that compute bf16 "
        "natively (AVX512-BF16, AMX), fp32 on other CPUs; evaluation and export are always fp32. YAML reads a bare "
        "off as false and on as true: false means off, true auto"
    )
    checkpoint_every: int = Field(0, ge=0, description="also checkpoint every N steps inside an epoch (0 = per epoch only)")
    log_every: PositiveInt = Field(20, description="steps between progress-bar updates (each costs a host sync)")
    max_logit: float = Field(
        1000.0, gt=0, description="a run whose logits (on a training batch or the validation images) exceed this in "
        "absolute value has diverged and stops (exit 2), as one with a non-finite loss does: healthy runs stay far "
        "below it (measured: trained Fashion-MNIST teachers and students 17-25, untrained models under 2)")
    sync_bn: bool = Field(False, description="multi-GPU (DDP on CUDA): SyncBatchNorm, batch statistics over all GPUs")

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        # YAML 1.1 reads a bare `off` / `no` as false and `on` / `yes` as true: `amp: off` means "off"
        return {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("schedule")
    @classmethod
    def _one_name(cls, v):
        return "multistep" if v == "step" else v  # one name for one thing, as distill.at.beta_schedule has it

    @field_validator("milestones")
    @classmethod
    def _sorted(cls, v, info: ValidationInfo):
        if v != sorted(set(v)):
            raise ValueError("milestones must be strictly increasing")
        if not v and info.data.get("schedule") == "multistep":  # it would silently keep the learning rate constant
            raise ValueError("required for schedule multistep (e.g. [60, 120, 160]); or use schedule cosine or "
                             "constant")
        return v


class PairSpec(Strict):
    """An attention pair as a recipe names it: module paths (wildcards inside one component), which
    distill.pairs resolves into `Pair`s of points."""

    teacher: str
    student: str


class ATConfig(Strict):
    enabled: bool = True
    beta: float = Field(1000.0, ge=0, description="weight of each attention pair (the paper's 1000)")
    p: float = Field(2.0, gt=0, description="exponent of |A|^p in the attention map")
    mapping: Literal["mean", "max"] = "mean"
    pairs: Union[Literal["auto"], list[PairSpec]] = Field("auto", description="auto: pair stage outputs by resolution")
    beta_schedule: Literal["constant", "multistep", "step", "cosine"] = Field(
        "constant", description="decay of beta over training (the paper decays it when AT is combined with KD): "
        "multistep (or step, the same: beta *= beta_gamma at each milestone) or cosine, as train.schedule"
    )
    beta_milestones: list[PositiveInt] = Field(
        default_factory=list, description="multistep: epochs where beta *= beta_gamma; empty = train.milestones"
    )
    beta_gamma: float = Field(0.1, gt=0, le=1, description="multistep: factor applied at each milestone")

    @field_validator("beta_schedule")
    @classmethod
    def _one_name(cls, v):
        return "multistep" if v == "step" else v  # the same name as train.schedule's

    @field_validator("beta_milestones")
    @classmethod
    def _beta_sorted(cls, v):
        if v != sorted(set(v)):
            raise ValueError("beta_milestones must be strictly increasing")
        return v


class GradATConfig(Strict):
    enabled: bool = False
    # 10: at initialisation the term is then about half the cross-entropy (measured: 0.13 at beta 1, WRN-16-2 -> 16-1
    # on Fashion-MNIST); the paper does not give its value for the per-image squared norm used here
    beta: float = Field(10.0, ge=0, description="weight of beta/2 * ||J_S - J_T||^2 (J = d loss / d input)")
    flip: bool = Field(False, description="add the flip-invariance term beta/2 * ||J(x) - flip(J(flip(x)))||^2")


class FeatureConfig(Strict):
    enabled: bool = False
    # 1: at initialisation each pair's term is then about 5 (measured, WRN-16-2 -> 16-1 on Fashion-MNIST), the order
    # of the AT terms at the paper's beta = 1000
    beta: float = Field(1.0, ge=0, description="weight of each pair's mean squared feature difference (F-ActT)")


class KDConfig(Strict):
    enabled: bool = True
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft-target term")
    temperature: float = Field(4.0, gt=0)


class DistillConfig(Strict):
    at: ATConfig = Field(default_factory=ATConfig)
    kd: KDConfig = Field(default_factory=KDConfig)
    grad_at: GradATConfig = Field(default_factory=GradATConfig)
    feature: FeatureConfig = Field(default_factory=FeatureConfig)

    def methods(self) -> list[str]:
        """The terms that are on: enabled, with a weight above 0."""
        return [m for m, on in (("kd", self.kd.enabled), ("at", self.at.enabled and self.at.beta > 0),
                                ("grad_at", self.grad_at.enabled and self.grad_at.beta > 0),
                                ("feature", self.feature.enabled and self.feature.beta > 0)) if on]


class ExportConfig(Strict):
    opset: int = Field(18, ge=13, le=23, description="ONNX opset")
    quantize: Literal["none", "int8"] = "none"
    int8_format: Literal["qdq", "qoperator"] = Field(
        "qdq", description="int8: QDQ (Quantize/DequantizeLinear pairs onnxruntime fuses) or QOperator (QLinearConv ...)")


class VerifyConfig(Strict):
    max_accuracy_drop: float | None = Field(2.0, ge=0, description="gate: points below the teacher (ONNX numbers)")
    min_speedup: float | None = Field(None, gt=0, description="gate: teacher p50 / student p50 at every batch size")
    max_latency_ms: dict[int, float] | None = Field(None, description="gate: student p50 per batch size")
    max_abs_diff: float = Field(1e-4, gt=0, description="gate: PyTorch vs onnxruntime logits, the absolute floor "
                                "of the tolerance max_abs_diff + parity_rtol * max|logit|")
    parity_rtol: float = Field(1e-5, ge=0, description="gate: the part of the parity tolerance relative to the "
                               "logits' scale (fp32 rounding grows with it)")
    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 64])
    warmup: int = Field(10, ge=0)
    min_runs: PositiveInt = 100
    min_seconds: float = Field(1.0, ge=0)
    rounds: PositiveInt = Field(5, description="latency: teacher and student are timed in this many alternating "
                                "rounds (drift and turbo hit both alike); the speed-up's interval is over rounds")
    threads: PositiveInt | None = Field(None, description="onnxruntime intra-op threads; null = all cores")


class Recipe(Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=lambda: StudentConfig(arch="wrn-16-1"))
    train: TrainConfig = Field(default_factory=TrainConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    _source: str | None = PrivateAttr(None)  # the file it was read from (recipe.load), an input a run never replaces

    @property
    def source(self) -> str | None:
        return self._source

    def __eq__(self, other) -> bool:  # the same settings, wherever they were read from
        return isinstance(other, Recipe) and self.model_dump() == other.model_dump()

    __hash__ = None  # mutable, like every pydantic model

    def methods(self) -> list[str]:
        return self.distill.methods()

    @model_validator(mode="after")
    def _beta_step_needs_milestones(self):
        at = self.distill.at
        if at.beta_schedule == "multistep" and not (at.beta_milestones or self.train.milestones):
            raise ValueError("distill.at.beta_schedule: multistep needs distill.at.beta_milestones (or "
                             "train.milestones)")
        return self

    @model_validator(mode="after")
    def _compile_has_no_double_backward(self):
        if self.train.compile and "grad_at" in self.methods():
            raise ValueError("train.compile: torch.compile cannot differentiate twice, which distill.grad_at needs; "
                             "turn one of them off")
        return self
