"""The torchdistill side of `distill_throughput.py`: its own virtual environment, and one AT+KD epoch driven by
torchdistill's distillation box over a standard torchvision DataLoader.

torchdistill is never a dependency of compressor. It lives in `.venv-bench`, a venv whose `.pth` file puts
compressor's site-packages on its path, so it reuses the very torch/torchvision build the other measurements
use (no second 5 GB download, no version skew) and holds only `torchdistill` itself, installed with --no-deps:
at import time it needs nothing beyond torch, torchvision, numpy, PyYAML and Pillow, which compressor's env has
(scipy and cython, in its metadata, are not imported by the package). The benchmark process appends the bench
venv's site-packages to `sys.path` after its own, so torch still comes from compressor's env.

    python benchmarks/torchdistill_run.py [VENV]   # create VENV (default .venv-bench) and check the import
"""

from __future__ import annotations

import logging
import subprocess
import sys
import sysconfig
from pathlib import Path

import torch

TORCHDISTILL = "torchdistill==1.1.5"  # the version whose DistillationBox / ATLoss / KDLoss API this file uses
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = ROOT / ".venv-bench"


def _site_packages(venv: Path) -> Path:
    v = sys.version_info
    return venv / "lib" / f"python{v.major}.{v.minor}" / "site-packages"


def ensure_venv(venv: Path = DEFAULT_VENV, install: bool = True) -> str | None:
    """Make `venv` hold torchdistill (creating it if allowed); None on success, else the reason it failed."""
    marker = venv / ".installed"
    if not marker.exists():
        if not install:
            return f"{venv} has no torchdistill (run `make bench-venv`, or drop --no-install)"
        print(f"creating {venv} with {TORCHDISTILL} (reusing this env's torch)", file=sys.stderr)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
            site = _site_packages(venv)
            # an `import` line in a .pth runs at start-up: addsitedir also processes compressor env's own .pth
            # files (its editable install), so `venv/bin/python` sees torch, compressor and torchdistill alike
            (site / "_compressor_env.pth").write_text(
                f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n", encoding="utf-8"
            )
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", TORCHDISTILL],
                           check=True, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as e:
            detail = getattr(e, "stderr", None) or str(e)
            lines = [ln for ln in str(detail).strip().splitlines() if ln.strip()]
            return f"could not create {venv} with {TORCHDISTILL}: {lines[-1] if lines else type(e).__name__}"
        marker.write_text(TORCHDISTILL + "\n", encoding="utf-8")
    return None


def load(venv: Path = DEFAULT_VENV, install: bool = True):
    """(torchdistill module, None), or (None, the reason it is unavailable).

    An importable torchdistill is used as it is (a CUDA machine with the wheel carried along, where no venv can
    be built offline); otherwise it comes from the bench venv, appended to sys.path so this env's torch wins.
    """
    try:
        import torchdistill
    except ImportError:
        reason = ensure_venv(venv, install)
        if reason:
            return None, reason
        site = str(_site_packages(venv))
        if site not in sys.path:
            sys.path.append(site)
        try:
            import torchdistill
        except Exception as e:  # a third-party import can fail with any exception type
            return None, f"torchdistill does not import from {venv}: {type(e).__name__}: {str(e).splitlines()[0]}"
    logging.getLogger("torchdistill").setLevel(logging.WARNING)  # it logs every model and loss at INFO
    return torchdistill, None


def fashion_mnist_loader_dataset(root: Path, n: int, mean: tuple, std: tuple):
    """The standard torchvision pipeline: PIL images through per-image transforms, the paper's augmentation."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.RandomCrop(28, padding=4, padding_mode="reflect"),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    full = datasets.FashionMNIST(str(root), train=True, download=False, transform=transform)
    return torch.utils.data.Subset(full, range(min(n, len(full))))


def train_config(pairs: list[tuple[str, str]], *, batch_size: int, workers: int, steps: int, lr: float,
                 momentum: float, weight_decay: float, beta: float, alpha: float, temperature: float,
                 pin_memory: bool) -> dict:
    """torchdistill's train_config (what its YAML files hold) for the same AT+KD loss and SGD as compressor.

    Its KDLoss weights cross-entropy by `alpha` and the soft term by 1 - alpha (compressor's alpha is the
    soft weight), so compressor's alpha 0.9 is torchdistill's 0.1. ATLoss mode "code" is the reference code's
    mean((Q_S - Q_T)^2) per pair; each pair weighs 1 inside it and the term weighs beta, as compressor's beta
    per pair. The scheduler steps every iteration, as compressor's does.
    """
    at_pairs = {
        f"pair{i}": {"teacher": {"io": "output", "path": t}, "student": {"io": "output", "path": s}, "weight": 1}
        for i, (t, s) in enumerate(pairs)
    }
    return {
        "num_epochs": 1,
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": {"class_or_func": torch.utils.data.RandomSampler, "kwargs": {}},
            "kwargs": {"batch_size": batch_size, "num_workers": workers, "drop_last": True,
                       "pin_memory": pin_memory, "persistent_workers": False},
        },
        # forward_proc named: 1.1.5 registers no default for a missing key (its sample configs all name one)
        "teacher": {"forward_proc": "forward_batch_only", "requires_grad": False,
                    "forward_hook": {"input": [], "output": [t for t, _ in pairs]}},
        "student": {"forward_proc": "forward_batch_only", "requires_grad": True,
                    "forward_hook": {"input": [], "output": [s for _, s in pairs]}},
        "optimizer": {"key": "SGD", "kwargs": {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}},
        "scheduler": {"key": "CosineAnnealingLR", "kwargs": {"T_max": steps}, "scheduling_step": 1},
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {"sub_terms": {
                "kd": {"criterion": {"key": "KDLoss", "kwargs": {
                    "student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
                    "teacher_module_io": "output", "temperature": temperature, "alpha": 1.0 - alpha,
                }}, "weight": 1.0},
                "at": {"criterion": {"key": "ATLoss", "kwargs": {"at_pairs": at_pairs, "mode": "code"}},
                       "weight": beta},
            }},
        },
    }


def run_epoch(teacher: torch.nn.Module, student: torch.nn.Module, dataset, config: dict, device: torch.device) -> int:
    """Build the distillation box and train one epoch as torchdistill's example script does (its
    `train_one_epoch`: batches to the device, forward_process, post_forward_process, `loss.item()` for the
    metric logger every step). Returns the number of images; the caller times the call, box construction
    included, as fit()'s set-up is in compressor's figure."""
    from torchdistill.core.distillation import get_distillation_box

    teacher.eval()  # frozen teacher with running BN statistics, as compressor runs it
    box = get_distillation_box(teacher, student, {"train": dataset}, config, device, None, False, 1)
    box.pre_epoch_process(epoch=0)
    images = 0
    for sample_batch, targets, supp_dict in box.train_data_loader:
        sample_batch, targets = sample_batch.to(device), targets.to(device)
        loss = box.forward_process(sample_batch, targets, supp_dict)
        box.post_forward_process(loss=loss)
        loss.item()
        images += len(targets)
    box.post_epoch_process()
    box.clean_modules()  # its hooks off the teacher, which the next round's box hooks again
    return images


if __name__ == "__main__":
    module, reason = load(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_VENV)
    if reason:
        print(reason, file=sys.stderr)
        raise SystemExit(1)
    print(f"torchdistill {module.__version__} from {Path(module.__file__).parent}, torch {torch.__version__}")
