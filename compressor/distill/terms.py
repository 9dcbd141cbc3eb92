"""What every loss term is: a name, a weight with its schedule, and a call on the step's tensors.

A term's `__call__(step)` returns its unweighted value (a scalar tensor); the objective multiplies it by
`weight.at(epoch, epochs)` and sums the weighted terms once. `Step` carries one training step's tensors, and
keeps what several terms of the step share (gradient AT's input gradients) so it is computed once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch

from compressor.core.schedule import factor


def full(t: torch.Tensor) -> torch.Tensor:
    """A bf16/fp16 tensor (from an autocast region) in float32; float32 and float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


@dataclass(frozen=True)
class Weight:
    """A term's weight and its decay over training (core.schedule: constant, step or cosine, by epoch)."""

    value: float
    schedule: str = "constant"
    milestones: Sequence[int] = ()
    gamma: float = 0.1

    def at(self, epoch: int, epochs: int) -> float:
        """The weight during 0-based `epoch` of `epochs`."""
        return self.value * factor(self.schedule, epoch, epochs, self.milestones, self.gamma)


@dataclass
class Step:
    """One training step's tensors, as the terms read them.

    x: the batch's (normalised, augmented) images, (N, C, H, W); it requires grad when a term differentiates
    the loss with respect to it. teacher_logits and teacher_features are constant targets; the features are the
    outputs at the attention points, in the pairs' order. teacher_graph: the teacher's logits with their graph
    to x, kept only for gradient AT's J_T.
    """

    x: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    student_features: Sequence[torch.Tensor] = ()
    teacher_features: Sequence[torch.Tensor] = ()
    teacher_graph: torch.Tensor | None = None
    epoch: int = 0
    epochs: int = 1
    shared: dict[str, Any] = field(default_factory=dict)

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """`compute()`, the first time a term of this step asks for `key`; its result after that."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]


class Term(Protocol):
    name: str  # its key in the step's named terms and in metrics.jsonl
    weight: Weight
    autocast: bool  # it runs a network forward: inside the step's autocast region
    needs_input_grad: bool  # it differentiates the loss with respect to the images
    needs_teacher: bool  # it reads the teacher's forward (its logits, its points, its graph)
    needs_features: bool  # it reads the attention points' outputs (the training taps)

    def __call__(self, step: Step) -> torch.Tensor: ...


class Reads:
    """The flags of `Term` with their defaults (a term of the student's logits alone); a term class inherits
    them and sets the ones that differ."""

    autocast: ClassVar[bool] = False
    needs_input_grad: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = False
    needs_features: ClassVar[bool] = False


@dataclass
class PairTerm(Reads):
    """A term of one attention pair: named `<prefix>.<pair>`, it reads the pair's outputs (position `index` of
    the step's features)."""

    pair: str
    index: int
    weight: Weight
    prefix: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True
    needs_features: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return f"{self.prefix}.{self.pair}"

    def outputs(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        """(student, teacher) outputs at this pair's points."""
        return step.student_features[self.index], step.teacher_features[self.index]
