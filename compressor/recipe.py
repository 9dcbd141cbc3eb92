"""Recipes: YAML files validated by pydantic models (unknown keys are errors).

`load_recipe(path, overrides)` reads the YAML, applies `--set dotted.key=value` overrides (values parsed as
YAML, so `1000`, `[1, 64]` and `null` mean what they look like), validates, and raises one `UserError` that
lists every problem as `path.to.key: message`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError

PositiveInt = Annotated[int, Field(gt=0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    name: Literal["fashion_mnist", "cifar10", "cifar100", "imagefolder"] = "fashion_mnist"
    root: str | None = Field(None, description="dataset folder; null = $COMPRESSOR_DATA or ./data")
    limit_train: PositiveInt | None = Field(None, description="use at most this many training images (smoke runs)")
    limit_test: PositiveInt | None = Field(None, description="use at most this many test images (smoke runs)")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="held out of train to choose the best epoch")
    pad: int = Field(4, ge=0, le=64, description="reflect padding before the random crop (0 = no crop)")
    flip: bool = Field(True, description="random horizontal flip")
    image_size: PositiveInt = Field(224, description="imagefolder: images are resized to this square size")
    channels: Literal[1, 3] = Field(3, description="imagefolder: 1 = grey-scale, 3 = RGB")


class TeacherConfig(Strict):
    arch: str = Field("wrn-16-2", description="registered architecture (for `compress train`, state_dict files)")
    epochs: PositiveInt | None = Field(None, description="`compress train` epochs; null = train.epochs")


class StudentConfig(Strict):
    arch: str | None = Field(None, description="registered architecture, e.g. wrn-16-1")
    size: Union[float, str, None] = Field(
        None, description="instead of arch: a fraction of the teacher's parameters (0.25) or a count (200k, 1.5M)"
    )

    @field_validator("size")
    @classmethod
    def _size(cls, v):
        if v is None:
            return v
        if isinstance(v, (int, float)):
            if not 0 < v <= 1 and v < 1000:
                raise ValueError("a fraction must be in (0, 1]; a count must be >= 1000 (or written 200k, 1.5M)")
            return float(v)
        if not re.fullmatch(r"\s*\d+(\.\d+)?\s*[kKmM]?\s*", v):
            raise ValueError(f"{v!r} is neither a fraction (0.25) nor a parameter count (200k, 1.5M)")
        return v.strip()

    @model_validator(mode="after")
    def _one_of(self):
        if self.arch and self.size is not None:
            raise ValueError("set either student.arch or student.size, not both")
        if not self.arch and self.size is None:
            raise ValueError("set student.arch (e.g. wrn-16-1) or student.size (e.g. 0.25)")
        return self


class TrainConfig(Strict):
    epochs: PositiveInt = 3
    batch_size: PositiveInt = 128
    lr: float = Field(0.1, gt=0, description="initial SGD learning rate")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[PositiveInt] = Field(default_factory=list, description="multistep: epochs where lr *= gamma")
    gamma: float = Field(0.2, gt=0, le=1)
    channels_last: bool = True
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="mixed precision: auto = bf16 on CUDA when supported, off on CPU"
    )
    checkpoint_every: int = Field(0, ge=0, description="also checkpoint every N steps inside an epoch (0 = per epoch only)")
    log_every: PositiveInt = Field(20, description="steps between progress-bar updates (each costs a host sync)")

    @field_validator("milestones")
    @classmethod
    def _sorted(cls, v):
        if v != sorted(set(v)):
            raise ValueError("milestones must be strictly increasing")
        return v


class Pair(Strict):
    teacher: str
    student: str


class ATConfig(Strict):
    enabled: bool = True
    beta: float = Field(1000.0, ge=0, description="weight of each attention pair (the paper's 1000)")
    p: float = Field(2.0, gt=0, description="exponent of |A|^p in the attention map")
    mapping: Literal["mean", "max"] = "mean"
    pairs: Union[Literal["auto"], list[Pair]] = Field("auto", description="auto: pair stage outputs by resolution")


class KDConfig(Strict):
    enabled: bool = True
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft-target term")
    temperature: float = Field(4.0, gt=0)


class DistillConfig(Strict):
    at: ATConfig = Field(default_factory=ATConfig)
    kd: KDConfig = Field(default_factory=KDConfig)


class ExportConfig(Strict):
    opset: int = Field(18, ge=13, le=23, description="ONNX opset")
    quantize: Literal["none", "int8"] = "none"


class VerifyConfig(Strict):
    max_accuracy_drop: float | None = Field(2.0, ge=0, description="gate: points below the teacher (ONNX numbers)")
    min_speedup: float | None = Field(None, gt=0, description="gate: teacher p50 / student p50 at every batch size")
    max_latency_ms: dict[int, float] | None = Field(None, description="gate: student p50 per batch size")
    max_abs_diff: float = Field(1e-4, gt=0, description="gate: PyTorch vs onnxruntime logits")
    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 64])
    warmup: int = Field(10, ge=0)
    min_runs: PositiveInt = 100
    min_seconds: float = Field(1.0, ge=0)
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

    def methods(self) -> list[str]:
        return [m for m, on in (("kd", self.distill.kd.enabled), ("at", self.distill.at.enabled and self.distill.at.beta > 0)) if on]


# ---------------------------------------------------------------------------------------------- loading


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"--set {text}: expected dotted.key=value")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {text}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(raw: dict, overrides: Iterable[str]) -> dict:
    for text in overrides:
        path, value = _parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise UserError(f"--set {text}: {'.'.join(path[: i + 1])} is not a section")
            node = nxt
        node[path[-1]] = value
    return raw


def _fields_at(loc: tuple) -> list[str]:
    """Valid keys of the section that `loc` (a pydantic error location) points into."""
    model: Any = Recipe
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-after", "literal["))))
        # union members show up as locations ("list[Pair]", "float"); keep only real keys and indices
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("float", "str", "int", "bool"))))
        path = ".".join(str(p) for p in loc) or "recipe"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _fields_at(loc), n=1)
            msg = f"unknown key" + (f"; did you mean {'.'.join([*map(str, loc[:-1]), close[0]])}?" if close else "")
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        line = f"{path}: {msg}"
        if line not in lines:
            lines.append(line)
    return lines


def validate_recipe(raw: Any, source: str = "recipe") -> Recipe:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: a recipe is a mapping of sections (data, teacher, student, ...), got {type(raw).__name__}")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise UserError(*format_errors(e)) from None


def read_yaml(path: str | Path) -> Any:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{p}: recipe not found") from None
    except IsADirectoryError:
        raise UserError(f"{p}: is a directory, not a recipe file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read recipe ({e})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{p}{where}: invalid YAML: {problem}") from None


def load_recipe(path: str | Path | None, overrides: Iterable[str] = ()) -> Recipe:
    """Read, override and validate a recipe; raise one UserError listing every problem."""
    raw = read_yaml(path) if path is not None else {}
    if raw is None:
        raw = {}
    if isinstance(raw, dict):
        raw = apply_overrides(raw, overrides)
    return validate_recipe(raw, str(path or "recipe"))


def recipe_schema() -> dict:
    return Recipe.model_json_schema()
