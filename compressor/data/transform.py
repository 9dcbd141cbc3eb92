"""What happens to a batch of stored uint8 images on the training device: the paper's augmentation
(`augment_batch`) and the conversion into the model's input (`Normalize`, made from a core.preprocess record):
resized and grey repeated into RGB where the dataset is held at another size, then normalised."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from compressor.core.preprocess import Preprocess


class Normalize:
    """uint8 (N, c, h, w) -> float (N, C, H, W): (x / 255 - mean) / std, fused as x * a + b; a batch held at another
    size or channel count (a built-in dataset at data.image_size / data.channels) is first resized (bilinear,
    antialiased) and its grey channel repeated."""

    def __init__(self, mean, std, device, memory_format=torch.contiguous_format, *,
                 size: tuple[int, int] | None = None, channels: int | None = None):
        mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -mean / std
        self.memory_format = memory_format
        self.size, self.channels = size, channels

    @classmethod
    def of(cls, pre: Preprocess, device, memory_format=torch.contiguous_format, *, mean=None, std=None) -> "Normalize":
        """The conversion a preprocessing record describes (`mean`/`std`: another normalisation, e.g. the one an
        ONNX file records)."""
        c, h, w = pre.input_shape
        return cls(mean or pre.mean, std or pre.std, device, memory_format,
                   size=(h, w) if pre.stored_shape is not None else None,
                   channels=c if pre.stored_shape is not None else None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(memory_format=self.memory_format)
        if self.size is None and self.channels is None:
            return torch.addcmul(self.shift, x.float(), self.scale)
        x = x.float()
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        if self.channels is not None and x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)  # (N, 1, H, W) -> (N, 3, H, W): grey into R, G and B
        return torch.addcmul(self.shift, x, self.scale).contiguous(memory_format=self.memory_format)


def augment_batch(
    x: torch.Tensor, pad: int, flip: bool, g: torch.Generator, share: tuple[int, int] | None = None
) -> torch.Tensor:
    """The paper's augmentation for a whole uint8 batch at once: reflect-pad, random crop, horizontal flip.

    (N, C, H, W) -> (N, C, H, W). Offsets and flips come from `g` (on the CPU), so a run is reproducible and
    a resumed epoch sees exactly the batches the interrupted one would have. `share=(start, total)`: `x` is
    images start..start+N of a batch of `total` (one rank's part); the draws are made for the whole batch, so
    every image gets the crop and flip it gets in a single process.
    """
    n, c, h, w = x.shape
    start, total = share or (0, n)
    keep = slice(start, start + n)
    if pad > 0:
        oy = torch.randint(0, 2 * pad + 1, (total,), generator=g)[keep].to(x.device)
        ox = torch.randint(0, 2 * pad + 1, (total,), generator=g)[keep].to(x.device)
        # reflect padding is not implemented for uint8: pad as float, then crop by gathering rows and columns
        padded = torch.nn.functional.pad(x.float(), (pad, pad, pad, pad), mode="reflect")
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
        batch = torch.arange(n, device=x.device)[:, None, None]
        x = padded[batch, :, rows, cols]  # (N, H, W, C): advanced indices first, then the sliced channels
        x = x.permute(0, 3, 1, 2).to(torch.uint8)  # (N, C, H, W), channels_last in memory
    if flip:
        mask = (torch.rand(total, generator=g) < 0.5)[keep].to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x
