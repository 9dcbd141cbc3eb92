"""Datasets: Fashion-MNIST, CIFAR and a user's ImageFolder, split into train / validation / test.

Small datasets are held in memory as uint8 tensors (`Split`); an ImageFolder too large for
data.memory_budget_gb stays on disk and is streamed (`streaming.FileSplit`). Batching: data.batches.

Run `python -m compressor.data ROOT` to make sure Fashion-MNIST is present under ROOT.
"""

from __future__ import annotations

import gzip
import os
import shutil
import sys
from pathlib import Path

import torch

from compressor.core.errors import UserError, first_line
from compressor.core.preprocess import Preprocess
from compressor.data.splits import DataBundle, Split, stratified_indices
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
IMAGEFOLDER_SIZE = 224  # data.image_size: null for an ImageFolder: what ImageNet-pretrained teachers take
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


NATIVE_SHAPE = {"fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}  # (C, H, W) as stored


def input_shape_of(cfg) -> tuple[int, int, int]:
    """The (C, H, W) the models take for a recipe's data section, without loading it (an ImageFolder's
    image_size / channels default to 224 / 3)."""
    if cfg.name == "imagefolder":
        return (cfg.channels or 3, cfg.image_size or IMAGEFOLDER_SIZE, cfg.image_size or IMAGEFOLDER_SIZE)
    c, h, w = NATIVE_SHAPE[cfg.name]
    return (cfg.channels or c, cfg.image_size or h, cfg.image_size or w)


def default_root() -> Path:
    return Path(os.environ.get("COMPRESSOR_DATA", "data"))


def data_root(cfg) -> Path:
    """The folder a recipe's data is read from: data.root, else $COMPRESSOR_DATA or ./data."""
    return Path(cfg.root) if cfg.root else default_root()


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
            continue
        problems += [f"data.root: {root / split / c} is an empty class folder (no {', '.join(sorted(IMAGE_SUFFIXES))} "
                     "files): add its images or remove it" for c, found in files.items() if not found]
    if problems:
        raise UserError(*problems)
    classes = sorted(train_files)

    def split(files: dict[str, list[Path]]) -> FileSplit:
        paths = [str(f) for c in classes for f in files.get(c, [])]
        labels = [label for label, c in enumerate(classes) for _ in files.get(c, [])]
        return FileSplit(paths, torch.tensor(labels, dtype=torch.long), size, channels)

    return split(train_files), split(test_files), classes


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
        train, test, classes = _load_imagefolder(root, cfg.image_size or IMAGEFOLDER_SIZE, cfg.channels or 3)
    else:  # the recipe's Literal makes this unreachable; kept as a clear failure
        raise UserError(f"data.name: unknown dataset {name!r}")

    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=g)
    if cfg.limit_train:
        order = order[: cfg.limit_train]
    n_val = int(round(len(order) * cfg.val_fraction))
    val = train.subset(order[:n_val]) if n_val > 0 else None
    train = train.subset(order[n_val:])
    if cfg.limit_test:
        test = test.subset(stratified_indices(test.labels, cfg.limit_test, seed))
    if len(train) == 0:
        raise UserError("data.limit_train: no training images left after the validation split")
    loader, why = choose_loader(cfg, train, val, test)
    if loader == "memory" and isinstance(train, FileSplit):  # decode once, with the evaluation transform
        train, test = (s.take(torch.arange(len(s)), cfg.workers) for s in (train, test))
        val = val.take(torch.arange(len(val)), cfg.workers) if val is not None else None
    stored = tuple(train.shape)  # (C, H, W) as held (an ImageFolder: already at the size the models take)
    c, h, w = stored
    shape = (cfg.channels or c, cfg.image_size or h, cfg.image_size or w)
    if shape[0] < c:
        raise UserError(f"data.channels: {cfg.channels} for {name}, whose images have {c} channels; only grey images "
                        "can be repeated into RGB (data.channels 3 for a 1-channel dataset)")
    mean, std = NORMALISATION[name]
    source = "dataset"
    if getattr(cfg, "mean", None) is not None:
        mean, std, source = cfg.mean, cfg.std, "recipe"
    if len(mean) != shape[0]:  # grey-scale data with RGB statistics, or grey repeated into RGB
        mean, std = (sum(mean) / len(mean),) * shape[0], (sum(std) / len(std),) * shape[0]
    pre = Preprocess(name, shape, tuple(mean), tuple(std), stored if stored != shape else None, source)
    return DataBundle(name, train, val, test, classes, pre, str(root), loader, why)


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
    augment = resolve_augment(cfg.augment, cfg.image_size or IMAGEFOLDER_SIZE)
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
