"""What a model costs: its parameter count, the FLOPs of one image's forward pass, and its memory (`footprint`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape) -> int:
    """FLOPs of one image's forward pass, counted by torch.utils.flop_counter (a multiply-add is 2)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class Footprint:
    """What one image costs a model's forward pass in memory, in bytes (fp32), and the weights' own.

    `outputs`: every leaf module's output summed — about what a training step keeps for its backward pass;
    `peak`: the largest single output — an inference pass holds about two of them (a layer's input and output)."""

    outputs: int
    peak: int
    weights: int

    def training(self, batch: int) -> int:
        """A training step of this model at `batch`: the kept activations and their gradients (x2), the weights
        with their gradients, momentum and the best epoch's copy (x4)."""
        return batch * 2 * self.outputs + 4 * self.weights

    def inference(self, batch: int) -> int:
        return batch * 2 * self.peak + self.weights


def footprint(model: nn.Module, input_shape) -> Footprint:
    """The model's Footprint for (C, H, W) images, measured by one forward pass on fake tensors: shapes are
    propagated, nothing is allocated, so a 2048 px image costs what a 28 px one does."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    sizes: list[int] = []

    def record(_module, _inputs, output):
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                sizes.append(t.numel() * 4)  # fp32, whatever autocast would use: the upper figure

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            model(torch.empty(1, *input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
    input_bytes = 4 * int(torch.tensor(input_shape).prod())
    return Footprint(outputs=sum(sizes) + input_bytes, peak=max([*sizes, input_bytes]), weights=weights)
