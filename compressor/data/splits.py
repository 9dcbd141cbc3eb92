"""What the stages hand each other: a split of images with labels (`Split`: in memory, uint8; the streaming
loader's `FileSplit` has the same interface) and the dataset bundle (`DataBundle`), plus seeded stratified
sampling (`stratified_indices`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from compressor.core.preprocess import Preprocess
from compressor.data.transform import Normalize


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # (C, H, W)

    def to(self, device: torch.device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.labels[index])

    def take(self, index: torch.Tensor) -> "Split":
        """These images, as a Split on the CPU (the same call decodes them on the streaming path)."""
        index = index.to(self.images.device)
        return Split(self.images[index].cpu(), self.labels[index].cpu())

    def chunks(self, batch_size: int, workers: int | None = None):
        """(uint8 images, labels) batches in order."""
        for i in range(0, len(self), batch_size):
            yield self.images[i : i + batch_size], self.labels[i : i + batch_size]

    def take_batches(self, index: torch.Tensor, batch_size: int, workers: int | None = None):
        """These images as (uint8 images, labels) batches on the CPU, one batch in memory at a time (the same call
        decodes them batch by batch on the streaming path)."""
        for i in range(0, len(index), batch_size):
            taken = self.take(index[i : i + batch_size])
            yield taken.images, taken.labels


@dataclass(frozen=True)
class DataBundle:
    """A dataset's three splits, its classes, and how its images become a model's input (`preprocess`). Frozen:
    a stage that feeds the data otherwise (a teacher's own normalisation) makes a new bundle (`with_normalisation`)."""

    name: str
    train: Split  # or a streaming.FileSplit
    val: Split | None
    test: Split
    classes: list[str]
    preprocess: Preprocess
    root: str = ""
    loader: str = "memory"  # memory | stream
    loader_reason: str = ""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.preprocess.input_shape  # (C, H, W) the models take

    @property
    def mean(self) -> tuple[float, ...]:
        return self.preprocess.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.preprocess.std

    def normalize(self, device, memory_format=torch.contiguous_format, *, mean=None, std=None) -> Normalize:
        """What turns a batch of this data's stored images into the models' input on `device`."""
        return Normalize.of(self.preprocess, device, memory_format, mean=mean, std=std)

    def with_normalisation(self, mean, std, source: str) -> "DataBundle":
        return replace(self, preprocess=self.preprocess.with_normalisation(mean, std, source))

    @property
    def streamed(self) -> bool:
        return not isinstance(self.train, Split)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def stratified_indices(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """`n` indices drawn across the classes in proportion to their sizes, seeded, in ascending order.

    For the images a run uses but does not need all of (limit_test, parity and calibration images): the first
    N of a class-ordered split (an ImageFolder) would be the first classes only. Each class's images are taken
    in a seeded random order and the classes interleaved by how far through their own class each image is, so
    any prefix holds every class in proportion (a class of k images gets n*k/N of them, rounded).
    """
    labels = labels.cpu()
    if n >= len(labels):
        return torch.arange(len(labels))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    shuffled = labels[order]
    position = torch.empty(len(labels), dtype=torch.float64)  # (rank in its class + 0.5) / class size
    for c in torch.unique(shuffled):
        members = (shuffled == c).nonzero().flatten()
        position[members] = (torch.arange(len(members), dtype=torch.float64) + 0.5) / len(members)
    pick = order[torch.sort(position, stable=True).indices[:n]]
    return torch.sort(pick).values
