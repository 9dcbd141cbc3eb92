"""The streaming data path (issue 14): an ImageFolder of real JPEG files decoded by DataLoader workers.

The folder is made of real Fashion-MNIST images, converted to RGB and upsized, saved as JPEG; the teacher is a
torchvision ResNet-18 state_dict, as a user would bring.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from compressor.data import streaming
from compressor.data.transform import Normalize
from compressor.data.datasets import load_data
from compressor.recipe.schema import DataConfig

from .conftest import RECIPE, ROOT, sets

CLASSES = (0, 1, 7)  # T-shirt, trouser, sneaker


def jpeg_folder(root: Path, per_class: dict[str, int], size: int = 64) -> Path:
    """root/<split>/<class>/*.jpg: Fashion-MNIST images as RGB JPEGs of `size` px (non-square: size x size*5/4)."""
    from PIL import Image
    from torchvision.datasets import FashionMNIST

    ds = FashionMNIST(str(ROOT / "data"), train=True, download=False)
    offset = 0
    for split, n in per_class.items():
        for label in CLASSES:
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            idx = (ds.targets == label).nonzero().flatten()[offset : offset + n].tolist()
            for i, j in enumerate(idx):
                im = ds[j][0].convert("RGB").resize((size * 5 // 4, size), Image.BILINEAR)
                im.save(folder / f"{i}.jpg", quality=90)
        offset += n
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return jpeg_folder(tmp_path_factory.mktemp("jpegs"), {"train": 40, "test": 10})


def _cfg(folder: Path, **kw) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(folder), image_size=56, channels=3, **kw)


def test_the_stream_path_decodes_nothing_up_front_and_only_what_a_run_uses(folder, monkeypatch):
    calls = []
    real = streaming.decode
    monkeypatch.setattr(streaming, "decode", lambda path, channels: calls.append(path) or real(path, channels))
    data = load_data(_cfg(folder, loader="stream", limit_train=20, limit_test=6), seed=0)
    assert calls == [] and data.streamed and data.loader == "stream"
    assert len(data.train) + len(data.val) == 20 and len(data.test) == 6 and data.input_shape == (3, 56, 56)
    assert sorted(data.test.labels.tolist()) == [0, 0, 1, 1, 2, 2]  # stratified, not the first class's 6
    # the memory path decodes the images the limits keep, not the folder
    memory = load_data(_cfg(folder, loader="memory", limit_train=20, limit_test=6), seed=0)
    assert len(calls) == 26 and not memory.streamed
    # both paths give the same evaluation images (Resize(64) + CenterCrop(56) of the non-square JPEGs)
    assert torch.equal(memory.test.images, data.test.take(torch.arange(6)).images)
    assert torch.equal(torch.cat([x for x, _ in data.test.chunks(4, workers=2)]), memory.test.images)


def test_auto_chooses_memory_when_it_fits_and_stream_when_not(folder):
    small = load_data(_cfg(folder, augment="pad_crop"), seed=0)
    assert small.loader == "memory" and "under data.memory_budget_gb" in small.loader_reason
    over = load_data(_cfg(folder, augment="pad_crop", memory_budget_gb=0.0001), seed=0)
    assert over.loader == "stream" and "over data.memory_budget_gb" in over.loader_reason
    rrc = load_data(_cfg(folder, augment="random_resized_crop"), seed=0)
    assert rrc.loader == "stream" and "random_resized_crop" in rrc.loader_reason


def _batches(split, world=1, rank=0, workers=2, seed=3):
    normalize = Normalize((0.5,) * 3, (0.25,) * 3, torch.device("cpu"))
    return streaming.StreamBatches(split, 8, normalize, train=True, augment="random_resized_crop", flip=True,
                                   seed=seed, drop_last=True, rank=rank, world=world, workers=workers)


def test_order_and_augmentation_are_seeded_per_epoch_whoever_decodes(folder):
    data = load_data(_cfg(folder, loader="stream", val_fraction=0.0), seed=0)
    one = list(_batches(data.train, workers=0).iterate(epoch=1))
    two = list(_batches(data.train, workers=2).iterate(epoch=1))
    assert len(one) == len(data.train) // 8
    for (xa, ya), (xb, yb) in zip(one, two):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # --resume mid-epoch: batches 3.. are the interrupted epoch's batches 3.., bit for bit
    resumed = list(_batches(data.train).iterate(epoch=1, start=3))
    assert len(resumed) == len(one) - 3
    for (xa, _), (xb, _) in zip(one[3:], resumed):
        assert torch.equal(xa, xb)
    # another epoch (or seed) is another order and other crops
    other = list(_batches(data.train).iterate(epoch=2))
    assert not torch.equal(one[0][0], other[0][0])
    # two ranks each decode their half of every global batch; together they are the one-process batches
    halves = [list(_batches(data.train, world=2, rank=r).iterate(epoch=1)) for r in (0, 1)]
    for (x, y), (x0, y0), (x1, y1) in zip(one, *halves):
        assert len(y0) == len(y1) == 4
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


@pytest.fixture(scope="module")
def resnet18_teacher(tmp_path_factory) -> Path:
    """A torchvision ResNet-18 state_dict with 3 classes (what torch.save(model.state_dict()) writes)."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=len(CLASSES)).state_dict(), path)
    return path


STREAM = ["data.name=imagefolder", "data.image_size=56", "data.channels=3", "data.loader=stream",
          "data.augment=random_resized_crop", "data.workers=2", "data.limit_train=null", "data.limit_test=null",
          "teacher.arch=resnet18", "student.arch=resnet18-w0.25", "train.batch_size=16", "train.lr=0.01",
          "verify.batch_sizes=[1,4]",
          "distill.at.pairs=[{teacher: layer3, student: layer3}, {teacher: layer4, student: layer4}]"]


def test_distill_end_to_end_on_the_stream_path(folder, resnet18_teacher, tmp_path, cli):
    out = tmp_path / "run"
    r = cli("distill", resnet18_teacher, "--recipe", RECIPE, "--out", out, "--set", f"data.root={folder}",
            *sets(*STREAM))
    assert r.exit_code in (0, 1), r.output
    assert "data: stream loader (data.loader: stream)" in r.output
    report = json.loads((out / "report.json").read_text())
    for name in ("student.pt", "student.onnx", "teacher.onnx", "report.json", "report.md", "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert report["data"]["loader"] == "stream" and report["data"]["train"] + report["data"]["val"] == 120
    assert report["data"]["test"] == 30 and report["distillation"]["first_step_seconds"] > 0
    gates = {g["name"]: g for g in report["gates"]}
    assert gates["max_abs_diff"]["passed"] and gates["teacher_max_abs_diff"]["passed"]
    assert gates["onnx_accuracy_agreement"]["passed"]  # onnxruntime on the centre crops = PyTorch on them
    meta = {p.key: p.value for p in onnx.load(out / "student.onnx").metadata_props}
    assert json.loads(meta["compressor.preprocess"])["resize_shorter_side"] == 64
    assert json.loads(meta["compressor.preprocess"])["center_crop"] == [56, 56]


def test_a_teacher_that_records_its_normalisation_is_fed_with_it(folder, tmp_path):
    from compressor.models import checkpoint as ckpt_io
    from compressor.models import create_model
    from compressor.teachers.load import load_teacher

    mean, std = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)
    ck = ckpt_io.model_checkpoint(create_model("resnet18", 3, 3), arch="resnet18", classes=["class0", "class1", "class7"],
                                  input_shape=(3, 56, 56), mean=mean, std=std, dataset="imagefolder", kind="teacher")
    ckpt_io.save(ck, tmp_path / "t.pt")
    data = load_data(_cfg(folder, limit_train=12, limit_test=3), seed=0)
    _, fed = load_teacher(tmp_path / "t.pt", "resnet18", data)
    assert fed.mean == mean and fed.std == std and fed.preprocess.normalisation == "teacher"
    assert data.preprocess.normalisation == "dataset" and data.mean != mean  # the bundle given is not changed
    # a recipe that sets other values is told they differ
    from compressor.core.errors import UserError

    data = load_data(_cfg(folder, limit_train=12, limit_test=3, mean=[0.5] * 3, std=[0.5] * 3), seed=0)
    with pytest.raises(UserError, match="the teacher was trained with normalisation"):
        load_teacher(tmp_path / "t.pt", "resnet18", data)


@pytest.mark.parametrize("recipe", ["imagefolder_resnet_at.yaml", "imagenet_at.yaml"])
def test_the_shipped_imagefolder_recipes_run_a_few_steps(recipe, folder, tmp_path, cli):
    """The transfer and ImageNet recipes as shipped (ResNet-34 -> ResNet-18, AT on layer3 and layer4, the stream
    path), shrunk to a few steps on the generated JPEGs; a full run needs a GPU machine (README)."""
    import torchvision

    torch.manual_seed(0)
    teacher = tmp_path / "resnet34.pt"
    torch.save(torchvision.models.resnet34(num_classes=len(CLASSES)).state_dict(), teacher)
    tiny = ["data.limit_train=24", "data.limit_test=6", "data.image_size=64", "train.batch_size=8", "train.epochs=1",
            "verify.min_runs=2", "verify.min_seconds=0", "verify.warmup=1", "verify.rounds=1", "verify.batch_sizes=[1]",
            f"data.root={folder}", "device=cpu", "data.workers=2"]
    r = cli("distill", teacher, "--recipe", ROOT / "recipes" / recipe, "--out", tmp_path / "run",
            *[a for s in tiny for a in ("--set", s)])
    assert r.exit_code in (0, 1), r.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["data"]["loader"] == "stream"
    assert [p["teacher"] for p in report["distillation"]["pairs"]] == ["layer3", "layer4"]
    assert report["student"]["arch"] == "resnet18" and report["teacher"]["arch"] == "resnet34"


def test_a_broken_image_met_by_a_worker_is_one_line_and_exit_2(folder, resnet18_teacher, tmp_path, cli):
    import shutil

    broken = tmp_path / "folder"
    shutil.copytree(folder, broken)
    (broken / "train" / "class0" / "0.jpg").write_bytes(b"\xff\xd8\xff\xe0 not the rest of a JPEG")
    r = cli("distill", resnet18_teacher, "--recipe", RECIPE, "--out", tmp_path / "run", "--set", f"data.root={broken}",
            *sets(*STREAM))
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "0.jpg: not a readable image" in lines[0] and "Traceback" not in r.output


def test_resume_on_the_stream_path_gives_the_same_student(folder, tmp_path, cli):
    """kill -9 inside epoch 2 and --resume: the student is bit-identical to an uninterrupted run's (CPU)."""
    from compressor.models import create_model

    from .test_resume import kill_inside_an_epoch, start_cli, student_checkpoint

    torch.manual_seed(0)
    teacher = tmp_path / "wrn.pt"
    torch.save(create_model("wrn-10-1", len(CLASSES), 3).state_dict(), teacher)
    args = ["distill", teacher, "--recipe", RECIPE, "--set", f"data.root={folder}",
            *sets(*STREAM[:6], "data.workers=2", "teacher.arch=wrn-10-1", "student.arch=wrn-10-1", "train.epochs=2",
                  "train.batch_size=12", "train.checkpoint_every=2", "verify.batch_sizes=[1]", "device=cpu")]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    r = cli(*args, "--out", straight)
    assert r.exit_code == 0, r.output
    proc = start_cli(*args, "--out", killed)
    _, step = kill_inside_an_epoch(proc, killed / "train_state.pt")  # inside epoch 2, the last
    r = cli(*args, "--out", killed, "--resume")
    assert r.exit_code == 0, r.output
    assert f"resuming from epoch 2 step {step}" in r.output
    a, b = student_checkpoint(straight)["state_dict"], student_checkpoint(killed)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
