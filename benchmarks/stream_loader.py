"""The streaming data path on a folder of real JPEGs: memory, time to the first step, loader vs step images/s.

Generates an ImageFolder of N training JPEGs at 224x224 (Fashion-MNIST images, RGB, upsized; 10 classes) plus
1,000 test JPEGs, then for each N:
  - the loader alone: `StreamBatches` over one epoch's first 4,096 images (decode 224 px JPEG, RandomResizedCrop,
    flip), images/s with the recipe's workers;
  - `compress distill` for one epoch with `data.limit_train=2048`, and for one full epoch of all N images, each
    with the peak memory of its whole process tree (the main process and its DataLoader workers: the sum of their
    PSS, so shared pages count once) while training and over the whole run, the time to the first training step,
    and the step's images/s; for the smallest N also the memory path (every image decoded up front).
The models are small (WRN-10-1 teacher and student at 64 px, RandomResizedCrop from the 224 px files), so that a
full epoch of 40,000 images runs in minutes on 2 cores: what is measured is the data path, which decodes the full
224 px JPEGs whatever the models.

    .venv/bin/python benchmarks/stream_loader.py --images 20000 40000 --out docs/stream_2026-12-01.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_folder(root: Path, n_train: int, n_test: int = 1000, size: int = 224) -> Path:
    """root/train/<class>/*.jpg and root/test/<class>/*.jpg; reused when already complete."""
    from PIL import Image
    from torchvision.datasets import FashionMNIST

    done = root / ".complete"
    if done.exists() and done.read_text() == f"{n_train} {n_test} {size}":
        return root
    ds = FashionMNIST(str(ROOT / "data"), train=True, download=False)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            j = (i if split == "train" else 60000 - 1 - i) % len(ds)
            image, label = ds[j]
            folder = root / split / ds.classes[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            image.convert("RGB").resize((size, size), Image.BILINEAR).save(folder / f"{i}.jpg", quality=90)
    done.write_text(f"{n_train} {n_test} {size}")
    return root


def subset_folder(full: Path, root: Path, n_train: int) -> Path:
    """The first n_train training JPEGs of `full` (hard links: no copy) and all of its test JPEGs."""
    done = root / ".complete"
    if done.exists() and done.read_text() == str(n_train):
        return root
    files = sorted((full / "train").rglob("*.jpg"), key=lambda p: int(p.stem))[:n_train]
    for f in [*files, *(full / "test").rglob("*.jpg")]:
        dest = root / f.relative_to(full)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            os.link(f, dest)
    done.write_text(str(n_train))
    return root


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(cmd: list[str], env: dict) -> dict:
    """Run `cmd`; sample the PSS of its process tree every 0.1 s. Returns the exit code, the peak MiB while it
    trained (until it printed "exporting to ONNX") and over the whole run (export and onnxruntime included), and
    the wall seconds."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples: list[tuple[float, int]] = []

    def sample():
        while proc.poll() is None:
            samples.append((time.perf_counter(), sum(_pss_kib(p) for p in _tree(proc.pid))))
            time.sleep(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    lines, export_at = [], None
    for line in proc.stdout:
        lines.append(line)
        if export_at is None and "exporting to ONNX" in line:
            export_at = time.perf_counter()
    proc.wait()
    t.join()
    training = [kib for when, kib in samples if export_at is None or when < export_at]
    return {"exit_code": proc.returncode, "peak_pss_mib_training": max(training, default=0) / 1024,
            "peak_pss_mib_whole_run": max((kib for _, kib in samples), default=0) / 1024,
            "wall_seconds": time.perf_counter() - started, "tail": "".join(lines)[-1500:]}


def loader_alone(folder: Path, images: int, workers: int) -> dict:
    from compressor.data.transform import Normalize
    from compressor.data.datasets import load_data
    from compressor.data.streaming import StreamBatches
    from compressor.recipe.schema import DataConfig

    data = load_data(DataConfig(name="imagefolder", root=str(folder), image_size=64, channels=3, loader="stream",
                                limit_train=images, val_fraction=0.0), seed=0)
    batches = StreamBatches(data.train, 64, Normalize((0.5,) * 3, (0.25,) * 3, torch.device("cpu")), train=True,
                            augment="random_resized_crop", flip=True, workers=workers, drop_last=True)
    it = batches.iterate(0)
    next(it)  # workers started, first batch in
    t0, n = time.perf_counter(), 0
    for x, _ in it:
        n += len(x)
    seconds = time.perf_counter() - t0
    return {"images": n, "seconds": seconds, "images_per_second": n / seconds, "workers": workers}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, nargs="+", default=[20000, 40000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/compressor-stream-bench"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from compressor.models import create_model

    work = args.work
    full = make_folder(work / f"jpegs{max(args.images)}", max(args.images))
    torch.manual_seed(0)
    teacher = work / "wrn-10-1.pt"
    torch.save(create_model("wrn-10-1", 10, 3).state_dict(), teacher)
    exe = [str(Path(sys.executable).with_name("compress"))]
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    common = ["data.name=imagefolder", "data.image_size=64", "data.channels=3", "data.loader=stream",
              "data.augment=random_resized_crop", f"data.workers={args.workers}", "data.val_fraction=0.02",
              "teacher.arch=wrn-10-1", "student.arch=wrn-10-1", "train.epochs=1", "train.batch_size=128",
              "verify.batch_sizes=[1]", "verify.min_runs=10", "verify.min_seconds=0", "verify.rounds=1",
              "verify.max_accuracy_drop=null", "verify.min_speedup=null", "device=cpu"]
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                           "date": time.strftime("%Y-%m-%d")}, "runs": []}
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    results["machine"]["avx512_bf16"] = "avx512_bf16" in flags
    for n in args.images:
        folder = full if n == max(args.images) else subset_folder(full, work / f"jpegs{n}", n)
        row = {"train_images": n, "loader_alone": loader_alone(folder, 4096, args.workers)}
        variants = [("limit_train_2048", "2048", []), ("full_epoch", "null", [])]
        if n == min(args.images):  # the memory path on the same folder: decodes every image before the first step
            variants.append(("memory_full_epoch", "null", ["data.loader=memory", "data.augment=pad_crop",
                                                           "data.memory_budget_gb=64"]))
        for label, limit, extra in variants:
            out = work / f"run{n}-{label}"
            cmd = [*exe, "distill", str(teacher), "--recipe", str(ROOT / "tests" / "smoke.yaml"), "--out", str(out),
                   "--force", *[a for s in [*common, f"data.root={folder}", f"data.limit_train={limit}", *extra]
                                for a in ("--set", s)]]
            measured = run_measured(cmd, env)
            report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
            d = report.get("distillation", {})
            row[label] = {**{k: v for k, v in measured.items() if k != "tail" or measured["exit_code"] not in (0, 1)},
                          "train_images": report.get("data", {}).get("train"), "first_step_seconds": d.get("first_step_seconds"),
                          "step_images_per_second": d.get("images_per_second")}
            print(json.dumps({n: {label: row[label]}}), flush=True)
        results["runs"].append(row)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
