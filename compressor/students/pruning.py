"""Students grown from the teacher: the teacher with channels removed by structured pruning (Torch-Pruning's
DepGraph), down to a target number of parameters and/or FLOPs.

`grow_student(teacher, target_params, ...)` returns a pruned copy of the teacher (the caller's teacher is left
as it was) and a record of how it was made. The pruned student keeps the teacher's module names, so its
attention points are the teacher's and `auto` pairs them one-to-one at equal resolution.

A pruned model is described by `channel_plan(model, base)`: for every module whose channel counts differ from the
freshly built base architecture, its channel attributes (`in_channels`, `out_channels`, `num_features`, ...).
`apply_channel_plan(base, plan, shapes)` shrinks a fresh base model back to it, so a student checkpoint holds only
tensors, strings and numbers and reloads with `torch.load(weights_only=True)` anywhere.

Criteria (measured on the Fashion-MNIST WRN-16-2 teacher, docs/RESULTS.md): `taylor` (first-order Taylor,
|w · dL/dw| summed over each coupled channel group, from a few training batches), `magnitude` (the L2 norm of
each group's weights, no data needed). BatchNorm statistics are recalibrated on training batches afterwards:
removing channels changes the inputs of every later BN.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from compressor.core.errors import UserError, first_line
from compressor.models.measure import count_flops, count_params
from compressor.models.plan import CHANNEL_ATTRS, IDENTITY

CRITERIA = ("taylor", "magnitude")


class CannotPrune(Exception):
    """The teacher's graph is one the pruner cannot trace or shrink; the message says why in one line."""


def _classifier_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """The layers whose outputs are the logits: never pruned (their output is the class dimension)."""
    heads = [m for m in model.modules()
             if (isinstance(m, nn.Linear) and m.out_features == num_classes)
             or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes and m.kernel_size == (1, 1))]
    return heads[-1:] if heads else []


def _stem(model: nn.Module) -> list[nn.Module]:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[:1]


def _importance(criterion: str):
    import torch_pruning as tp

    if criterion == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise UserError(f"student.criterion: unknown criterion {criterion!r}; known: {', '.join(CRITERIA)}")


def _prune_copy(model: nn.Module, ratio: float, *, criterion: str, example: torch.Tensor, num_classes: int,
                keep_stem: bool, grads: dict[str, torch.Tensor] | None, round_to: int | None = None,
                global_ranking: bool = False, removed: Iterable[str] = ()) -> nn.Module:
    """A copy of `model` with the blocks `removed` made identities, then `ratio` of its channels removed: of every
    prunable group (uniform), or of all groups ranked together by normalised importance (global_ranking)."""
    import torch_pruning as tp

    m = copy.deepcopy(model).eval()
    for name in removed:
        m.set_submodule(name, nn.Identity())
    if ratio <= 0:
        return m
    if grads:  # deepcopy does not copy .grad; the Taylor criterion reads it
        for name, p in m.named_parameters():
            if name in grads:
                p.grad = grads[name].clone()
    ignored = _classifier_layers(m, num_classes) + (_stem(m) if keep_stem else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch-pruning warns about unwrapped parameters it leaves alone
        pruner = tp.pruner.MetaPruner(m, example, importance=_importance(criterion), pruning_ratio=ratio,
                                      ignored_layers=ignored, global_pruning=global_ranking, round_to=round_to)
        pruner.step()
    for p in m.parameters():
        p.grad = None
    return m


def prune_copy(model: nn.Module, ratio: float, **kwargs) -> nn.Module:
    """`_prune_copy` with the pruner's many failure types on graphs it cannot trace as one CannotPrune."""
    try:
        return _prune_copy(model, ratio, **kwargs)
    except (CannotPrune, UserError):
        raise
    except Exception as e:
        raise CannotPrune(first_line(e)) from None


def taylor_grads(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return _taylor_grads(model, batches)


# ---------------------------------------------------------------------------------------------- depth


def removable_blocks(model: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
    """The blocks a student may drop whole: modules inside an nn.Sequential (a stage of blocks) that hold a
    convolution and whose output has their input's shape, so that the identity can take their place (a residual
    block without downsampling). Not the model's declared feature points: those are the attention points."""
    points = {getattr(f, "module", None) for f in getattr(model, "feature_info", None) or []}
    found: list[str] = []
    shapes: dict[str, bool] = {}
    hooks = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        for child_name, child in parent.named_children():
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, nn.Sequential) or name in points:
                continue
            if not any(isinstance(m, nn.Conv2d) for m in child.modules()):
                continue
            found.append(name)

            def hook(mod, args, out, name=name):
                x = args[0] if args else None
                shapes[name] = isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor) and x.shape == out.shape

            hooks.append(child.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return [n for n in found if shapes.get(n)]


@torch.no_grad()
def rank_blocks(model: nn.Module, names: list[str], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
                ) -> list[tuple[str, float]]:
    """Each removable block with how much the model's cross-entropy rises on `batches` when it alone is an
    identity; the least missed first."""
    data = list(batches)
    model = model.eval()

    def loss(m: nn.Module) -> float:
        return sum(float(F.cross_entropy(m(x), y, reduction="sum")) for x, y in data) / sum(len(y) for _, y in data)

    base = loss(model)
    rises = []
    for name in names:
        kept = model.get_submodule(name)
        model.set_submodule(name, nn.Identity())
        try:
            rises.append((name, loss(model) - base))
        finally:
            model.set_submodule(name, kept)
    return sorted(rises, key=lambda r: r[1])


def _taylor_grads(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """dCE/dw summed over a few training batches, on a copy (the teacher's own grads stay untouched)."""
    m = copy.deepcopy(model).eval()  # eval: BN in inference mode, as the frozen teacher runs
    for p in m.parameters():
        p.requires_grad_(True)
        p.grad = None
    for x, y in batches:
        F.cross_entropy(m(x), y).backward()
    return {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}


def grow_student(
    teacher: nn.Module,
    target_params: int | None,
    *,
    target_flops: int | None = None,
    input_shape: tuple[int, int, int],
    num_classes: int,
    criterion: str = "taylor",
    keep_stem: bool = True,
    round_to: int | None = None,
    global_ranking: bool = False,
    grad_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
) -> tuple[nn.Module, dict]:
    """The teacher pruned at the smallest channel ratio whose parameter count is <= `target_params` and whose FLOPs
    per image are <= `target_flops` (either may be None): the largest student under the target(s).

    Uniform (the default here): every prunable channel group keeps the same fraction of its channels;
    `global_ranking`: the channels of all groups are ranked together by normalised importance (the recipe's
    default: with `round_to` it fills the budget where uniform rounding cannot, docs/RESULTS.md). The ratio is
    searched on copies (one prune of WRN-16-2 takes ~0.02 s). `grad_batches()` yields (images, labels) for the
    Taylor criterion. Raises CannotPrune for a graph the pruner cannot handle, UserError for an unreachable target.
    """
    teacher = teacher.cpu().eval()
    example = torch.zeros(2, *input_shape)
    grads = None
    if criterion == "taylor":
        if grad_batches is None:
            raise ValueError("the taylor criterion needs grad_batches")
        grads = _taylor_grads(teacher, grad_batches())
    prune = lambda r: _prune_copy(teacher, r, criterion=criterion, example=example, num_classes=num_classes,  # noqa: E731
                                  keep_stem=keep_stem, grads=grads, round_to=round_to,
                                  global_ranking=global_ranking)
    full = count_params(teacher)

    def fits(m: nn.Module) -> bool:
        return ((target_params is None or count_params(m) <= target_params)
                and (target_flops is None or count_flops(m, input_shape) <= target_flops))

    # the parameter count falls with the ratio but not everywhere monotonically (near 1 the pruner leaves groups
    # it would empty, and round_to makes steps): a coarse scan finds the first ratio under the target, then
    # bisection between it and the scan point before it finds the smallest such ratio (the largest student)
    try:
        lo, hi, best = 0.0, None, None
        for step in range(1, 20):
            m = prune(step * 0.05)
            if fits(m):
                _check_runs(m, example, num_classes)
                hi, best = step * 0.05, m
                break
            lo = step * 0.05
    except (CannotPrune, UserError):
        raise
    except Exception as e:  # the pruner's failures on graphs it cannot trace take many forms
        raise CannotPrune(first_line(e)) from None
    if best is None:
        what = " and ".join(t for t in (target_params and f"{target_params:,} parameters",
                                        target_flops and f"{target_flops:,} FLOPs") if t)
        raise UserError(f"student.size: pruning the teacher ({full:,} parameters) to 95% of its channels still "
                        f"leaves more than the target {what}")
    best_ratio = hi
    for _ in range(10):  # to 5e-5 of the ratio: within a channel of the target at these widths
        mid = (lo + hi) / 2
        m = prune(mid)
        if fits(m):
            best, best_ratio, hi = m, mid, mid
        else:
            lo = mid
    info = {"criterion": criterion, "ratio": round(best_ratio, 5), "keep_stem": keep_stem, "round_to": round_to,
            "allocation": "global" if global_ranking else "uniform",
            "params": count_params(best), "teacher_params": full, "target_params": target_params,
            "target_flops": target_flops}
    return best, info


def _check_runs(model: nn.Module, example: torch.Tensor, num_classes: int) -> None:
    with torch.no_grad():
        out = model(example)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(example), num_classes):
        raise CannotPrune(f"the pruned graph returns {getattr(out, 'shape', type(out).__name__)}, not logits")


# ---------------------------------------------------------------------------------------------- rebuilding


def channel_plan(pruned: nn.Module, base: nn.Module) -> dict[str, dict[str, int | list[int]]]:
    """{module path: {channel attribute: value}} for every module whose channel attributes differ from `base`
    (the same architecture freshly built). Plain data: it goes into checkpoints."""
    base_modules = dict(base.named_modules())
    plan: dict = {}
    for name, m in pruned.named_modules():
        b = base_modules.get(name)
        if isinstance(m, nn.Identity) and b is not None and not isinstance(b, nn.Identity):
            plan[name] = {IDENTITY: True}  # a block removed whole (its children are not in the pruned model)
            continue
        if b is None or type(b) is not type(m):
            raise CannotPrune(f"module {name or '(root)'} is not in the base architecture")
        diff = {}
        for attr in CHANNEL_ATTRS:
            if hasattr(m, attr) and getattr(m, attr) != getattr(b, attr):
                v = getattr(m, attr)
                diff[attr] = list(v) if isinstance(v, tuple) else int(v)
        if diff:
            plan[name] = diff
    return plan


