"""The streaming data path: an ImageFolder kept as a list of files, decoded and augmented by DataLoader workers.

The in-memory path (datasets.py) decodes every image once and holds the split as one uint8 tensor: right for
Fashion-MNIST, CIFAR and small folders, wrong for tens of thousands of photos at 224 px (a 50,000-image folder
is ~7.5 GB per copy, and minutes of decoding before the first step). Here a split is paths + labels; a batch's
images are decoded in worker processes (`torchvision.transforms.v2`), so memory stays flat whatever the folder's
size and the first step comes after the first batch, not after the whole folder.

It keeps the memory path's promises:
- order and augmentation are seeded per (seed, epoch): the sampler draws the epoch's permutation from the same
  generator as `batches.Batches` (data.sampling), and every image's augmentation from its own seed (seed, epoch, position), so
  which worker decodes it does not matter and `--resume` mid-epoch sees the same batches, bit for bit;
- with `world` > 1 each rank gets its contiguous share of every global batch (DistributedSampler's job) and
  decodes only that: no rank holds the data;
- evaluation is Resize(size / 0.875) + CenterCrop(size), the torchvision/timm convention, on every path.

Images come out as uint8 (N, C, H, W) and are normalised on the training device by `transform.Normalize`, as on
the memory path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from compressor.core.errors import UserError
from compressor.core.preprocess import EVAL_CROP
from compressor.data.sampling import batch_count, batch_share, epoch_order


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def eval_transform(size: int):
    """PIL image -> uint8 (C, size, size): shorter side to size / 0.875, then the centre size x size."""
    from torchvision.transforms import v2

    return v2.Compose([v2.PILToTensor(), v2.Resize(round(size / EVAL_CROP), antialias=True), v2.CenterCrop(size)])


def train_transform(size: int, augment: str, pad: int, flip: bool):
    """PIL image -> uint8 (C, size, size), augmented: `random_resized_crop` (ImageNet-style: a random area of
    8-100 % and aspect 3/4-4/3, resized to size) or `pad_crop` (the paper's CIFAR setting: the evaluation crop,
    reflect-padded by `pad`, a random size x size crop); then a horizontal flip when `flip`."""
    from torchvision.transforms import v2

    steps = [v2.PILToTensor()]
    if augment == "random_resized_crop":
        steps.append(v2.RandomResizedCrop(size, antialias=True))
    else:
        steps += [v2.Resize(round(size / EVAL_CROP), antialias=True), v2.CenterCrop(size)]
        if pad:
            steps.append(v2.RandomCrop(size, padding=pad, padding_mode="reflect"))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


# PIL's modes of more than 8 bits a grey pixel: PIL's own convert("L") clips them at 255 (a 16-bit PNG became a
# black-and-white image), so they are scaled here: 0..65535 -> 0..255
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def as_mode(im, channels: int):
    """A PIL image in the mode the data asks for, L (channels 1) or RGB (3), every pixel scaled, not clipped:
    16-bit grey to 8 bits (v / 257, rounded); float images in [0, 1] to 0..255; palette images through their
    palette; alpha dropped and the colour kept (torchvision's and timm's loaders do the same); CMYK by PIL's
    (255 - C)(255 - K) / 255; grey to RGB by repeating it, RGB to grey by ITU-R 601 luma (PIL's)."""
    import numpy as np
    from PIL import Image

    if im.mode in _WIDE_GREY:
        wide = np.asarray(im).astype(np.float64)
        im = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        values = np.asarray(im).astype(np.float64)
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
        im = Image.fromarray(np.clip(np.rint(np.nan_to_num(values) * scale), 0, 255).astype(np.uint8), "L")
    return im.convert("L" if channels == 1 else "RGB")


def decode(path: str, channels: int):
    """One image file as a PIL image in the mode the data asks for (`as_mode`); a broken file is a UserError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return as_mode(im, channels)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserError(f"{path}: not a readable image ({e})") from None


@dataclass
class FileSplit:
    """A split as files: `files[i]` has class `labels[i]`; decoded (and resized to `size`) only when used."""

    files: list[str]
    labels: torch.Tensor  # (N,) int64
    size: int
    channels: int

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def to(self, device) -> "FileSplit":  # the files stay where they are; batches go to the device
        return self

    def subset(self, index: torch.Tensor) -> "FileSplit":
        return FileSplit([self.files[i] for i in index.tolist()], self.labels[index], self.size, self.channels)

    def take(self, index: torch.Tensor, workers: int | None = None):
        """These images decoded with the evaluation transform, as an in-memory `Split` (by worker processes when
        there are many)."""
        from compressor.data.splits import Split

        index = torch.as_tensor(index, dtype=torch.long)
        if len(index) > 256:
            parts = list(self.subset(index).chunks(256, workers))
            return Split(torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]))
        t = eval_transform(self.size)
        images = [t(decode(self.files[i], self.channels)) for i in index.tolist()]
        return Split(torch.stack(images) if images else torch.zeros(0, *self.shape, dtype=torch.uint8), self.labels[index])

    def take_batches(self, index: torch.Tensor, batch_size: int, workers: int | None = None):
        """These images as (uint8 images, labels) batches, decoded a batch at a time by worker processes."""
        yield from self.subset(torch.as_tensor(index, dtype=torch.long)).chunks(batch_size, workers)

    def chunks(self, batch_size: int, workers: int | None = None):
        """(uint8 images, labels) batches in order, decoded with the evaluation transform by worker processes."""
        loader = _loader(_Images(self, eval_transform(self.size)), _ordered(len(self), batch_size), workers, False)
        yield from _unwrapped(loader)


class _Images(Dataset):
    """Decodes `split.files[i]` and applies `transform`, seeded by the key the sampler gives with the index."""

    def __init__(self, split: FileSplit, transform):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        image = decode(self.split.files[i], self.split.channels)
        if seed is not None:  # v2's random transforms draw from torch's global generator, in this worker
            torch.manual_seed(seed)
        return self.transform(image), self.split.labels[i]


class _EpochBatches(Sampler):
    """The training batches of one epoch, from batch `start` on: this rank's share of each global batch, every
    index with the seed of its augmentation. `set_epoch` chooses the epoch before the loader is iterated."""

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool, rank: int, world: int):
        self.n, self.batch_size, self.seed, self.drop_last = n, batch_size, seed, drop_last
        self.rank, self.world = rank, world
        self.epoch, self.start = 0, 0

    @property
    def batches(self) -> int:
        return batch_count(self.n, self.batch_size, self.drop_last)

    def __len__(self) -> int:  # what is left of the epoch from `start`: the loader's length
        return self.batches - self.start

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        _, order = epoch_order(self.seed, self.epoch, self.n)
        order = order.tolist()
        base = (self.seed * 1_000_003 + self.epoch) * 4_000_037  # per-image augmentation seeds of this epoch
        for i in range(self.start, self.batches):
            _, _, share = batch_share(i, self.batch_size, self.n, self.rank, self.world)
            yield [(order[j], (base + j) % (2**63)) for j in range(share.start, share.stop)]


def _ordered(n: int, batch_size: int) -> BatchSampler:
    """Batches 0..n in order (evaluation)."""
    return BatchSampler(SequentialSampler(range(n)), batch_size, drop_last=False)


def _unwrapped(loader):
    """Iterate a DataLoader; a UserError raised in a worker (a broken image) comes back as the one line it was,
    not as DataLoader's re-raise with the worker's traceback in its message."""
    try:
        yield from loader
    except UserError as e:
        text = str(e).strip().splitlines()
        line = text[-1] if text else "unknown error"
        raise UserError(line.split("UserError: ", 1)[-1]) from None


def _loader(dataset, batch_sampler, workers: int | None, pin: bool) -> DataLoader:
    workers = min(8, available_cpus()) if workers is None else workers
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, pin_memory=pin,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)


class StreamBatches:
    """`batches.Batches` for a `FileSplit`: the same interface (len, iterate(epoch, start), normalised batches
    on the device), the images decoded by `workers` DataLoader processes that live as long as this object."""

    def __init__(self, split: FileSplit, batch_size: int, normalize, *, train: bool = False, augment: str = "auto",
                 pad: int = 0, flip: bool = False, seed: int = 0, drop_last: bool = False, rank: int = 0,
                 world: int = 1, workers: int | None = None, device: torch.device | None = None):
        self.split, self.batch_size, self.normalize, self.train = split, batch_size, normalize, train
        self.seed, self.device = seed, device or torch.device("cpu")
        if train:
            kind = resolve_augment(augment, split.size)
            self.sampler = _EpochBatches(len(split), batch_size, seed, drop_last, rank, world)
            transform = train_transform(split.size, kind, pad, flip)
        else:
            self.sampler = _ordered(len(split), batch_size)
            transform = eval_transform(split.size)
        self.loader = _loader(_Images(split, transform), self.sampler, workers, self.device.type == "cuda")

    def __len__(self) -> int:
        return self.sampler.batches if isinstance(self.sampler, _EpochBatches) else len(self.sampler)

    def iterate(self, epoch: int = 0, start: int = 0):
        if isinstance(self.sampler, _EpochBatches):
            self.sampler.set_epoch(epoch, start)
        elif start:
            raise ValueError("evaluation batches start at 0")
        for x, y in _unwrapped(self.loader):
            yield self.normalize(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)

    def __iter__(self):
        return self.iterate()


def resolve_augment(augment: str, size: int) -> str:
    """`auto`: the paper's pad + crop + flip for small images (<= 64 px, CIFAR-like), RandomResizedCrop above."""
    if augment == "auto":
        return "pad_crop" if size <= 64 else "random_resized_crop"
    return augment
