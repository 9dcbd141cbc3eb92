"""BatchNorm folding of the frozen teacher: a speed-up of the distillation step that does not change what it computes.

`fold_batchnorm(teacher, keep)` folds every eval-mode BatchNorm2d that directly follows a Conv2d into that
convolution's weight and bias (w' = w·γ/σ, b' = (b − μ)·γ/σ + β), the way the ONNX exporter's optimiser does
for the exported graph. The teacher runs frozen in eval mode, so its BN layers are a per-channel affine map of
fixed numbers: folded, one pass over each activation disappears. The module tree keeps its paths (the conv is
replaced by the folded conv, the BN by Identity), so forward hooks on the attention points still attach by
name; a conv whose own output is hooked (`keep`) is left alone, since folding would change what the hook sees.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv path, BN path) for each BatchNorm2d fed only by a Conv2d's output; [] when torch.fx cannot trace
    the model (data-dependent Python control flow), which then simply runs unfolded."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # tracing failures come as many exception types (TraceError, TypeError, ...)
        return []
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules.get(src.target), nn.Conv2d)
                and len(src.users) == 1):  # the conv's raw output is used nowhere else
            pairs.append((src.target, node.target))
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module, keep: Iterable[str] = ()) -> nn.Module:
    """An eval-mode copy of `model` with each conv -> BN pair folded into one conv; `model` is not changed
    (and is returned itself when nothing can be folded).

    keep: module paths whose outputs are hooked; a conv among them keeps its BN. (A hooked BN may be folded:
    the Identity that replaces it returns exactly what the BN did.)
    """
    keep = set(keep)
    pairs = [(c, b) for c, b in conv_bn_pairs(model) if c not in keep]
    if not pairs:  # nothing to fold (or not traceable: TorchScript, data-dependent control flow): as it is
        return model
    folded = copy.deepcopy(model).eval()
    modules = dict(folded.named_modules())
    for conv_path, bn_path in pairs:
        conv = fuse_conv_bn_eval(modules[conv_path], modules[bn_path])
        conv.requires_grad_(False)
        folded.set_submodule(conv_path, conv)
        folded.set_submodule(bn_path, nn.Identity())
    return folded
