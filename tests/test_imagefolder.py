"""Transfer-learning data: an ImageFolder of real Fashion-MNIST images, written as PNG files, trains and distils."""

import json

import torch
from PIL import Image
from torchvision.datasets import FashionMNIST

from compressor.data.datasets import NORMALISATION

from .conftest import RECIPE, ROOT, run_cli_here, sets

PER_CLASS = {"train": 24, "test": 8}


def write_imagefolder(root) -> list[str]:
    """root/train/<class>/*.png and root/test/<class>/*.png from the real Fashion-MNIST files."""
    classes = []
    for split, n in PER_CLASS.items():
        ds = FashionMNIST(str(ROOT / "data"), train=split == "train", download=False)
        for label, name in enumerate(ds.classes):
            folder = name.replace("/", "-")  # "T-shirt/top" is not a folder name
            classes.append(folder)
            (root / split / folder).mkdir(parents=True, exist_ok=True)
            for i, index in enumerate((ds.targets == label).nonzero().flatten()[:n].tolist()):
                Image.fromarray(ds.data[index].numpy(), mode="L").save(root / split / folder / f"{i}.png")
    return sorted(set(classes))


def test_imagefolder_trains_and_distils(tmp_path):
    classes = write_imagefolder(tmp_path / "folder")
    data = ("data.name=imagefolder", f"data.root={tmp_path / 'folder'}", "data.image_size=32", "data.channels=3",
            "data.pad=2", "verify.batch_sizes=[1]", "train.lr=0.05")

    teacher = tmp_path / "teacher.pt"
    r = run_cli_here("train", "--recipe", RECIPE, "--out", teacher, *sets(*data, "teacher.arch=wrn-10-1"))
    assert r.returncode == 0, r.stdout + r.stderr
    ck = torch.load(teacher, weights_only=True)
    # 28x28 grey PNGs read as RGB and resized to 32x32, normalised with ImageNet's statistics
    assert ck["input_shape"] == [3, 32, 32] and ck["classes"] == classes
    assert (tuple(ck["mean"]), tuple(ck["std"])) == NORMALISATION["imagefolder"]

    out = tmp_path / "run"
    r = run_cli_here("distill", teacher, "--recipe", RECIPE, "--out", out, *sets(*data, "student.arch=wrn-10-0.5"))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["name"] == "imagefolder" and report["data"]["classes"] == classes
    assert report["data"]["test"] == 10 * PER_CLASS["test"]
    assert report["data"]["train"] + report["data"]["val"] == 10 * PER_CLASS["train"]
    assert [p["student"] for p in report["distillation"]["pairs"]] == ["group0", "group1", "group2"]
    assert report["distillation"]["pairs"][0]["shape"] == [8, 32, 32]
    assert report["student"]["accuracy"] == report["student"]["onnx_accuracy"]
    student = torch.load(out / "student.pt", weights_only=True)
    assert student["input_shape"] == [3, 32, 32] and student["classes"] == classes
