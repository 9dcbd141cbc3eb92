"""Datasets as in-memory uint8 tensors, split into train / validation / test, batched with augmentation.

Small datasets (Fashion-MNIST, CIFAR, a user's ImageFolder resized to a fixed size) are held in memory as
uint8 tensors and augmented a whole batch at a time on the training device: on a 2-core CPU per-image
Python transforms cost more than the attention maps do.

Run `python -m compressor.datasets ROOT` to make sure Fashion-MNIST is present under ROOT.
"""

from __future__ import annotations

import gzip
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from compressor.core.errors import UserError, first_line
from compressor.data.streaming import FileSplit

# Per-dataset channel statistics (of the training split, pixel values scaled to [0, 1]); stored with every
# checkpoint and ONNX file so the deployed model is fed exactly what it was trained on.
NORMALISATION = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet's, as pretrained teachers expect
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def default_root() -> Path:
    return Path(os.environ.get("COMPRESSOR_DATA", "data"))


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


@dataclass
class DataBundle:
    name: str
    train: Split
    val: Split | None
    test: Split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.train.shape  # (C, H, W)

    @property
    def streamed(self) -> bool:
        return not isinstance(self.train, Split)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ---------------------------------------------------------------------------------------------- preparing


def prepare_fashion_mnist(root: str | os.PathLike) -> Path:
    """Make sure the four decompressed IDX files are under ROOT/FashionMNIST/raw/.

    Debian's `dataset-fashion-mnist` files are used where present (their md5s differ from torchvision's list,
    so torchvision's `download=True` would go to the network); otherwise torchvision downloads them.
    """
    raw = Path(root) / "FashionMNIST" / "raw"
    if all((raw / f).is_file() for f in FASHION_MNIST_FILES):
        return raw
    if all((DEBIAN_FASHION_MNIST / f"{f}.gz").is_file() for f in FASHION_MNIST_FILES):
        raw.mkdir(parents=True, exist_ok=True)
        for f in FASHION_MNIST_FILES:
            tmp = raw / f".{f}.tmp"
            with gzip.open(DEBIAN_FASHION_MNIST / f"{f}.gz", "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, raw / f)
        return raw
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as e:  # network errors come in many types
        raise UserError(
            f"Fashion-MNIST not found under {raw} and could not be downloaded ({e}); "
            "install Debian's dataset-fashion-mnist or copy the IDX files there"
        ) from None
    return raw


# ---------------------------------------------------------------------------------------------- loading


def _check_root(root: Path, what: str) -> None:
    if not root.exists():
        raise UserError(f"data.root: {root} does not exist ({what})")
    if not root.is_dir():
        raise UserError(f"data.root: {root} is a file, not a folder ({what})")
    if not os.access(root, os.R_OK | os.X_OK):
        raise UserError(f"data.root: {root} is not readable")


def _load_fashion_mnist(root: Path):
    from torchvision.datasets import FashionMNIST

    explicit = root != default_root()
    if explicit:
        _check_root(root, "expected FashionMNIST/raw/ with the four IDX files inside")
        if not all((root / "FashionMNIST" / "raw" / f).is_file() for f in FASHION_MNIST_FILES):
            raise UserError(f"data.root: {root}/FashionMNIST/raw/ lacks the Fashion-MNIST IDX files")
    else:
        prepare_fashion_mnist(root)
    splits = []
    for train in (True, False):
        try:
            ds = FashionMNIST(str(root), train=train, download=False)
        except Exception as e:  # truncated or foreign IDX files fail in torchvision's parser in many ways
            why = first_line(e)
            where = root / "FashionMNIST" / "raw"
            raise UserError(f"data.root: {where}/ holds unreadable Fashion-MNIST files ({why})") from None
        splits.append(Split(ds.data.unsqueeze(1).contiguous(), ds.targets.long()))
    return splits[0], splits[1], list(ds.classes)


def _load_cifar(root: Path, name: str):
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    _check_root(root, f"expected the {name} python archive extracted there")
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)
        except RuntimeError:
            raise UserError(
                f"data.root: {root} holds no {name} dataset (torchvision's "
                f"{'cifar-10-batches-py' if name == 'cifar10' else 'cifar-100-python'}/ folder)"
            ) from None
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 3) -> (N, 3, H, W)
        splits.append(Split(images, torch.tensor(ds.targets, dtype=torch.long)))
    return splits[0], splits[1], list(ds.classes)


def _list_images(folder: Path) -> dict[str, list[Path]]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    return {
        c: sorted(p for p in (folder / c).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        for c in classes
    }


def _load_imagefolder(root: Path, size: int, channels: int):
    _check_root(root, "expected train/ and test/ (or val/) folders of one sub-folder per class")
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    if not (root / "train").is_dir() or not test_dir.is_dir():
        raise UserError(f"data.root: {root} needs train/ and test/ (or val/) sub-folders, one folder per class")
    train_files, test_files = _list_images(root / "train"), _list_images(test_dir)
    problems = []
    if set(train_files) != set(test_files):
        only_train = sorted(set(train_files) - set(test_files))
        only_test = sorted(set(test_files) - set(train_files))
        problems.append(
            f"data.root: class folders differ between train/ and {test_dir.name}/ "
            f"(only in train: {only_train or 'none'}; only in {test_dir.name}: {only_test or 'none'})"
        )
    for split, files in (("train", train_files), (test_dir.name, test_files)):
        if not files or not any(files.values()):
            problems.append(f"data.root: {root / split} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if problems:
        raise UserError(*problems)
    classes = sorted(train_files)

    def split(files: dict[str, list[Path]]) -> FileSplit:
        paths = [str(f) for c in classes for f in files.get(c, [])]
        labels = [label for label, c in enumerate(classes) for _ in files.get(c, [])]
        return FileSplit(paths, torch.tensor(labels, dtype=torch.long), size, channels)

    return split(train_files), split(test_files), classes


def _subset(split, index: torch.Tensor):
    return split.subset(index)


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


def load_data(cfg, seed: int = 0) -> DataBundle:
    """Load the recipe's dataset; hold out a seeded validation split of the training set.

    The validation split chooses the best epoch; the test split is only used for the final numbers. An
    ImageFolder is listed, split and limited as files, and then either decoded into memory or kept as files for
    the streaming path (`choose_loader`); either way only the images the run uses are ever decoded.
    """
    name = cfg.name
    root = Path(cfg.root) if cfg.root else default_root()
    if name == "fashion_mnist":
        train, test, classes = _load_fashion_mnist(root)
    elif name in ("cifar10", "cifar100"):
        train, test, classes = _load_cifar(root, name)
    elif name == "imagefolder":
        train, test, classes = _load_imagefolder(root, cfg.image_size, cfg.channels)
    else:  # the recipe's Literal makes this unreachable; kept as a clear failure
        raise UserError(f"data.name: unknown dataset {name!r}")

    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=g)
    if cfg.limit_train:
        order = order[: cfg.limit_train]
    n_val = int(round(len(order) * cfg.val_fraction))
    val = _subset(train, order[:n_val]) if n_val > 0 else None
    train = _subset(train, order[n_val:])
    if cfg.limit_test:
        test = _subset(test, stratified_indices(test.labels, cfg.limit_test, seed))
    if len(train) == 0:
        raise UserError("data.limit_train: no training images left after the validation split")
    loader, why = choose_loader(cfg, train, val, test)
    if loader == "memory" and isinstance(train, FileSplit):  # decode once, with the evaluation transform
        train, test = (s.take(torch.arange(len(s)), cfg.workers) for s in (train, test))
        val = val.take(torch.arange(len(val)), cfg.workers) if val is not None else None
    mean, std = NORMALISATION[name]
    if getattr(cfg, "mean", None) is not None:
        mean, std = cfg.mean, cfg.std
    channels = train.shape[0]
    if len(mean) != channels:  # e.g. a grey-scale ImageFolder with ImageNet statistics
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    info = {"root": str(root), "loader": loader, "loader_reason": why}
    return DataBundle(name, train, val, test, classes, tuple(mean), tuple(std), info)


def decoded_bytes(*splits) -> int:
    """What the splits take as decoded uint8 tensors."""
    total = 0
    for split in splits:
        if split is not None:
            c, h, w = split.shape
            total += len(split) * c * h * w
    return total


def choose_loader(cfg, train, val, test) -> tuple[str, str]:
    """`data.loader`: memory or stream, and why. auto: memory when the decoded splits fit `data.memory_budget_gb`
    and the augmentation is one the memory path does (pad + crop + flip on the device); else stream."""
    from compressor.data.streaming import resolve_augment

    in_memory = not isinstance(train, FileSplit)
    need = decoded_bytes(train, val, test)
    if in_memory:
        if cfg.loader == "stream":
            raise UserError(f"data.loader: stream reads an ImageFolder's files; {cfg.name} is held in memory as "
                            f"decoded tensors ({need / 1e6:.0f} MB); use loader auto or memory")
        return "memory", f"{cfg.name} is decoded into memory ({need / 1e6:.0f} MB)"
    augment = resolve_augment(cfg.augment, cfg.image_size)
    budget = cfg.memory_budget_gb * 1e9
    if cfg.loader == "memory":
        if augment == "random_resized_crop":
            raise UserError("data.augment: random_resized_crop needs each whole image at every step, which the "
                            "memory path does not keep; use data.loader stream (or auto), or data.augment pad_crop")
        return "memory", f"data.loader: memory ({need / 1e9:.2f} GB decoded)"
    if cfg.loader == "stream":
        return "stream", "data.loader: stream"
    if augment == "random_resized_crop":
        return "stream", f"data.augment {augment} crops each whole image anew at every step"
    if need > budget:
        return "stream", (f"the decoded images would take {need / 1e9:.2f} GB, over data.memory_budget_gb "
                          f"({cfg.memory_budget_gb:g})")
    return "memory", f"the decoded images take {need / 1e9:.2f} GB, under data.memory_budget_gb ({cfg.memory_budget_gb:g})"


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


# ---------------------------------------------------------------------------------------------- batching


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else default_root()
    try:
        raw = prepare_fashion_mnist(root)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Fashion-MNIST ready in {raw}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
