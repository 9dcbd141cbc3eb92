"""Gradient-based attention transfer (Zagoruyko & Komodakis 2017, section 3.2): the student learns to be
sensitive to the same input pixels as the teacher.

    J(x)          = d L(x) / d x                                  (N, C, H, W): a network's "gradient attention"
    grad_at       = beta/2 * mean_i ||J_S(x)_i - J_T(x)_i||^2       i over the images of the batch
    grad_at.flip  = beta/2 * mean_i ||J_S(x)_i - flip(J_S(flip(x)))_i||^2

L is the cross-entropy against the true labels. Minimising grad_at needs the derivative of J_S with respect to
the student's weights, so J_S is computed with `create_graph=True` (double backprop); J_T is a constant.

Normalisation, and why:
- J_i is the gradient of image i's own loss: the batch loss is *summed* before differentiating. With the usual
  batch mean every J_i would carry a factor 1/N, and the term (and its useful beta) would change with the batch
  size. (In train mode BatchNorm couples the images of a batch, so J_i also holds small cross-image parts; that
  is the gradient of the loss the student is actually trained on.)
- The norm is the *squared* L2 norm of the flattened per-image difference, averaged over the batch. The paper
  writes beta/2 * ||J_S - J_T||_2; the beta/2 only makes sense for a square (its derivative is beta * (J_S - J_T)),
  and the plain norm has an unbounded-curvature kink at J_S = J_T, exactly where training drives it.
- The flip term is the paper's flip-invariance regulariser on the student alone (no teacher): a network whose
  prediction ignores horizontal flips has J(flip(x)) = flip(J(x)).

The maths are pure functions of tensors and modules, so tests check them against autograd and finite differences
on tiny models; `GradientAT` and `FlipInvariance` are the objective's two terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from compressor.distill.terms import Reads, Step, Weight, full


def hflip(t: torch.Tensor) -> torch.Tensor:
    """Mirror (N, C, H, W) images (or their gradients) left-right."""
    return t.flip(-1)


def input_gradient(logits: torch.Tensor, labels: torch.Tensor, x: torch.Tensor, *, create_graph: bool) -> torch.Tensor:
    """J = d sum_i CE(logits_i, y_i) / d x: (N, C, H, W), one gradient per image of its own loss.

    `x` must have required grad before the forward pass that produced `logits`.
    """
    loss = F.cross_entropy(full(logits), labels, reduction="sum")
    (j,) = torch.autograd.grad(loss, x, create_graph=create_graph)
    return j


def gradient_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1/2 * mean over the batch of the per-image squared L2 norm of a - b: two (N, ...) tensors -> a scalar."""
    return 0.5 * (full(a) - full(b)).flatten(1).pow(2).sum(1).mean()


def teacher_input_gradient(teacher: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """J_T for the teacher (frozen, eval mode): a constant target, so no graph is kept."""
    x_t = x.detach().requires_grad_(True)
    with torch.enable_grad():
        return input_gradient(teacher(x_t), labels, x_t, create_graph=False)


def student_gradient(step: Step) -> torch.Tensor:
    """J_S on the step's own student forward (its x required grad): one double-backprop pass, no extra forward."""
    return step.once("J_S", lambda: input_gradient(step.logits, step.labels, step.x, create_graph=True))


@dataclass
class GradientAT(Reads):
    """`grad_at`: the student's input gradient against the teacher's.

    J_T comes from the step's teacher forward on the same x with its graph (`step.teacher_graph`); without it,
    the teacher runs again here.
    """

    weight: Weight
    teacher: nn.Module
    name: ClassVar[str] = "grad_at"
    autocast: ClassVar[bool] = True
    needs_input_grad: ClassVar[bool] = True
    needs_teacher: ClassVar[bool] = True

    def __call__(self, step: Step) -> torch.Tensor:
        j_s = student_gradient(step)
        if step.teacher_graph is None:
            j_t = teacher_input_gradient(self.teacher, step.x, step.labels)
        else:  # a constant target: no graph kept
            j_t = input_gradient(step.teacher_graph, step.labels, step.x, create_graph=False)
        return gradient_distance(j_s, j_t)


@dataclass
class FlipInvariance(Reads):
    """`grad_at.flip`: the student's input gradient against its own on the mirrored images (one more forward)."""

    weight: Weight
    student: nn.Module
    name: ClassVar[str] = "grad_at.flip"
    autocast: ClassVar[bool] = True
    needs_input_grad: ClassVar[bool] = True

    def __call__(self, step: Step) -> torch.Tensor:
        j_s = student_gradient(step)
        x_f = hflip(step.x.detach()).requires_grad_(True)
        j_f = input_gradient(self.student(x_f), step.labels, x_f, create_graph=True)
        return gradient_distance(j_s, hflip(j_f))


DATA_PARALLEL = False  # a double backward, which DDP's gradient averaging does not cover


def build(ctx) -> list:
    """grad_at (and grad_at.flip) under `distill.grad_at` with a teacher and beta > 0.

    The extra forwards (the student's on flip(x), the teacher's when it runs again) also fire the training taps;
    their outputs are overwritten by the next step's forward before anyone reads them."""
    g = ctx.distill.grad_at
    if not ctx.on("grad_at"):
        return []
    terms = [GradientAT(Weight(g.beta), ctx.teacher)]
    if g.flip:
        terms.append(FlipInvariance(Weight(g.beta), ctx.student))
    return terms
