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

Pure functions of tensors and modules, so tests check them against autograd and finite differences on tiny models.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _wide(t: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 (autocast) -> float32; float32 and float64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def hflip(t: torch.Tensor) -> torch.Tensor:
    """Mirror (N, C, H, W) images (or their gradients) left-right."""
    return t.flip(-1)


def input_gradient(logits: torch.Tensor, labels: torch.Tensor, x: torch.Tensor, *, create_graph: bool) -> torch.Tensor:
    """J = d sum_i CE(logits_i, y_i) / d x: (N, C, H, W), one gradient per image of its own loss.

    `x` must have required grad before the forward pass that produced `logits`.
    """
    loss = F.cross_entropy(_wide(logits), labels, reduction="sum")
    (j,) = torch.autograd.grad(loss, x, create_graph=create_graph)
    return j


def gradient_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1/2 * mean over the batch of the per-image squared L2 norm of a - b: two (N, ...) tensors -> a scalar."""
    return 0.5 * (_wide(a) - _wide(b)).flatten(1).pow(2).sum(1).mean()


def teacher_input_gradient(teacher: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """J_T for the teacher (frozen, eval mode): a constant target, so no graph is kept."""
    x_t = x.detach().requires_grad_(True)
    with torch.enable_grad():
        return input_gradient(teacher(x_t), labels, x_t, create_graph=False)


def grad_at_terms(
    student: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    student_logits: torch.Tensor,
    *,
    beta: float,
    flip: bool = False,
    teacher_logits: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """{"grad_at": ..., ["grad_at.flip": ...]} for one batch, both already multiplied by beta.

    `student_logits` is the training step's own student forward on `x` (which required grad), so J_S costs one
    double-backprop pass and no extra forward; likewise `teacher_logits`, the step's teacher forward on the same
    `x` with grad enabled, gives J_T without a second teacher forward (None: the teacher runs here). The flip term
    needs one more student forward on flip(x).
    """
    j_s = input_gradient(student_logits, labels, x, create_graph=True)
    if teacher_logits is None:
        j_t = teacher_input_gradient(teacher, x, labels)
    else:  # a constant target: no graph kept
        j_t = input_gradient(teacher_logits, labels, x, create_graph=False)
    terms = {"grad_at": beta * gradient_distance(j_s, j_t)}
    if flip:
        x_f = hflip(x.detach()).requires_grad_(True)
        j_f = input_gradient(student(x_f), labels, x_f, create_graph=True)
        terms["grad_at.flip"] = beta * gradient_distance(j_s, hflip(j_f))
    return terms
