"""Batches of an in-memory split, augmented a whole batch at a time on the training device: on a 2-core CPU
per-image Python transforms cost more than the attention maps do. A streamed split (data.streaming) gives the
same interface; `make_batches` picks the one for a split.

Data order and augmentation of a training epoch come from the seed and the epoch alone (`epoch_generator`), so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import torch

from compressor.data.splits import Split
from compressor.data.streaming import FileSplit


def batch_count(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches of an epoch of n images (a last partial one dropped when `drop_last` and there is a full one)."""
    return n // batch_size if drop_last and n >= batch_size else -(-n // batch_size)


def batch_share(i: int, batch_size: int, n: int, rank: int, world: int) -> tuple[int, int, slice]:
    """Global batch i spans positions lo..hi of the epoch; rank `rank` of `world` takes its contiguous share."""
    lo, hi = i * batch_size, min((i + 1) * batch_size, n)
    return lo, hi, slice(lo + (hi - lo) * rank // world, lo + (hi - lo) * (rank + 1) // world)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one training epoch's order and augmentation: from the seed and the epoch alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def make_batches(split, batch_size: int, normalize, *, workers: int | None = None, device=None, augment: str = "auto",
                 **kw):
    """`Batches` for an in-memory split, `streaming.StreamBatches` for a FileSplit: the same interface."""
    if isinstance(split, FileSplit):
        from compressor.data.streaming import StreamBatches

        return StreamBatches(split, batch_size, normalize, workers=workers, device=device, augment=augment, **kw)
    return Batches(split, batch_size, normalize, **kw)


class Normalize:
    """uint8 (N, C, H, W) -> float (N, C, H, W), (x / 255 - mean) / std, fused as x * a + b."""

    def __init__(self, mean, std, device, memory_format=torch.contiguous_format):
        mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -mean / std
        self.memory_format = memory_format

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(memory_format=self.memory_format)
        return torch.addcmul(self.shift, x.float(), self.scale)


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


class Batches:
    """Iterate over a Split in batches: shuffled and augmented for training, in order for evaluation.

    `epoch_generator(epoch)` fixes the permutation and augmentation of each epoch from the seed alone;
    `start` skips the first batches of an epoch (used when resuming mid-epoch). With `world` > 1 (data-parallel
    training) `batch_size` is the global batch and rank `rank` gets its contiguous share of each one, the
    equivalent of DistributedSampler: the ranks together see exactly the single-process batches.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        normalize: Normalize,
        *,
        train: bool = False,
        pad: int = 0,
        flip: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world: int = 1,
    ):
        self.split, self.batch_size, self.normalize = split, batch_size, normalize
        self.train, self.pad, self.flip, self.seed, self.drop_last = train, pad, flip, seed, drop_last
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return batch_count(len(self.split), self.batch_size, self.drop_last)

    def epoch_generator(self, epoch: int) -> torch.Generator:
        return epoch_generator(self.seed, epoch)

    def iterate(self, epoch: int = 0, start: int = 0):
        n = len(self.split)
        g = self.epoch_generator(epoch)
        order = torch.randperm(n, generator=g).to(self.split.images.device) if self.train else None
        for i in range(len(self)):
            lo, hi, sl = batch_share(i, self.batch_size, n, self.rank, self.world)
            if order is not None:
                idx = order[sl]
                x, y = self.split.images[idx], self.split.labels[idx]
            else:
                x, y = self.split.images[sl], self.split.labels[sl]
            if self.train and (self.pad or self.flip):  # draws from g even for skipped batches
                x = augment_batch(x, self.pad, self.flip, g, share=(sl.start - lo, hi - lo))
            if i < start:
                continue
            yield self.normalize(x), y

    def __iter__(self):
        return self.iterate()
