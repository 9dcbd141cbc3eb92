"""Batches of an in-memory split, augmented a whole batch at a time on the training device: on a 2-core CPU
per-image Python transforms cost more than the attention maps do. A streamed split (data.streaming) gives the
same interface; `make_batches` picks the one for a split.

Data order and augmentation of a training epoch come from the seed and the epoch alone (data.sampling), so a
resumed run sees exactly the batches an uninterrupted one would. Both sources implement `BatchSource`.
"""

from __future__ import annotations

from typing import Protocol

import torch

from compressor.data.sampling import batch_count, batch_share, epoch_order
from compressor.data.splits import Split
from compressor.data.streaming import FileSplit, StreamBatches
from compressor.data.transform import Normalize, augment_batch


class BatchSource(Protocol):
    """What the training loop and evaluation read batches from: `Batches` (in memory) or `StreamBatches` (files)."""

    def __len__(self) -> int: ...

    def iterate(self, epoch: int = 0, start: int = 0): ...  # (normalised images, labels) on the device

    def __iter__(self): ...


def make_batches(split, batch_size: int, normalize, *, workers: int | None = None, device=None, augment: str = "auto",
                 **kw) -> BatchSource:
    """`Batches` for an in-memory split, `streaming.StreamBatches` for a FileSplit: the same interface."""
    if isinstance(split, FileSplit):
        return StreamBatches(split, batch_size, normalize, workers=workers, device=device, augment=augment, **kw)
    return Batches(split, batch_size, normalize, **kw)


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

    def iterate(self, epoch: int = 0, start: int = 0):
        n = len(self.split)
        g, order = epoch_order(self.seed, epoch, n)
        order = order.to(self.split.images.device) if self.train else None
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
