"""Which images a training step sees: the per-(seed, epoch) order and each process's share of a global batch.

Both batch sources (data.batches for images held in memory, data.streaming for files decoded by workers) take
their order from here, so a resumed run, a run with any number of DataLoader workers and a run on N processes see
exactly the images of an uninterrupted single-process run: the order depends on the seed and the epoch alone.
"""

from __future__ import annotations

import torch


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


def epoch_order(seed: int, epoch: int, n: int) -> tuple[torch.Generator, torch.Tensor]:
    """The epoch's generator and its permutation of the n training images (drawn first, so the generator goes on
    to draw the epoch's augmentation in the same sequence on every path)."""
    g = epoch_generator(seed, epoch)
    return g, torch.randperm(n, generator=g)
