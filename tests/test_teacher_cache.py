"""The teacher's export and ONNX accuracy are reused by the next run (in the process, and from the on-disk cache by
the next process) only when nothing they depend on changed: the same weights, test data (and the seed that draws
a limited test subset) and export settings, whatever the training images; a damaged cache entry is never served;
`COMPRESSOR_CACHE=off` turns the disk cache off."""

from __future__ import annotations

import pytest
import torch

from compressor.data.datasets import load_data
from compressor.models import create_model
from compressor.recipe.load import load_recipe
from compressor.verify import student as verify_student

from .conftest import RECIPE


@pytest.mark.e2e  # three real ONNX exports: ~4 s each
def test_the_teachers_export_is_reused_only_for_the_same_teacher_data_and_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(verify_student, "_teacher_done", [])
    recipe = load_recipe(RECIPE, ["data.limit_test=50", "data.limit_train=64"])
    data = load_data(recipe.data, recipe.seed)
    torch.manual_seed(0)
    teacher = create_model("wrn-10-1", num_classes=10, in_channels=1).eval()
    measured: list[str] = []

    def accuracy(path):
        measured.append(path.name)
        return 12.5

    def run(name, model=teacher, r=recipe, d=data) -> float:
        return verify_student._export_teacher(model, "wrn-10-1", d, r, tmp_path / name, accuracy)

    assert run("a.onnx") == 12.5 and measured == ["a.onnx"]
    assert run("b.onnx") == 12.5 and measured == ["a.onnx"]  # reused: same bytes, not measured again
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()

    # what shapes only the training images (how many, the validation share, augmentation) is not part of the key;
    # the test subset is
    train_only = load_recipe(RECIPE, ["data.limit_test=50", "data.limit_train=128", "data.val_fraction=0.25",
                                      "data.pad=0", "data.flip=false", "data.augment=pad_crop"])
    assert run("b2.onnx", r=train_only, d=load_data(train_only.data, 0)) == 12.5 and measured == ["a.onnx"]
    other_test = load_recipe(RECIPE, ["data.limit_test=60", "data.limit_train=64"])
    run("b3.onnx", r=other_test, d=load_data(other_test.data, 0))
    assert measured == ["a.onnx", "b3.onnx"]
    del measured[1:]

    other_seed = recipe.model_copy(update={"seed": 1})  # limit_test draws another subset
    run("c.onnx", r=other_seed, d=load_data(other_seed.data, 1))
    assert measured == ["a.onnx", "c.onnx"]

    changed = create_model("wrn-10-1", num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        changed.load_state_dict(teacher.state_dict())
        next(changed.parameters()).add_(1e-3)  # one weight moved: another teacher
    run("d.onnx", model=changed)
    assert measured == ["a.onnx", "c.onnx", "d.onnx"]

    # a new process (nothing in memory): the first teacher comes from the disk cache, the same bytes, not measured
    verify_student._teacher_done.clear()
    assert run("e.onnx") == 12.5 and measured == ["a.onnx", "c.onnx", "d.onnx"]
    assert (tmp_path / "e.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()
    entries = sorted((tmp_path / "cache" / verify_student.CACHE_KIND).glob("*.bin"))
    assert len(entries) == 4  # a, b3, c, d: four keys

    # a damaged entry is a miss (exported and measured again, then stored whole again)
    verify_student._teacher_done.clear()
    key = verify_student._teacher_key(teacher, "wrn-10-1", recipe, data)
    entry = tmp_path / "cache" / verify_student.CACHE_KIND / f"{key}.bin"
    entry.write_bytes(entry.read_bytes()[:-10])
    assert run("f.onnx") == 12.5 and measured[-1] == "f.onnx"
    assert (tmp_path / "f.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes() == entry.read_bytes()

    # the cache off: nothing read from disk
    monkeypatch.setenv("COMPRESSOR_CACHE", "off")
    verify_student._teacher_done.clear()
    run("g.onnx")
    assert measured[-1] == "g.onnx"


def test_the_cache_keeps_its_size_limit_least_recently_used_out(tmp_path, monkeypatch):
    import os

    from compressor.core import cache

    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path))
    monkeypatch.setenv("COMPRESSOR_CACHE_MB", str(2.5 / 1024))  # 2.5 KiB: two 1 KiB entries fit, not three
    assert cache.put("k", "a", b"a" * 1024, {"n": 1}) and cache.put("k", "b", b"b" * 1024, {"n": 2})
    os.utime(tmp_path / "k" / "a.bin", (1, 1))  # a: the least recently used
    assert cache.get("k", "b") == (b"b" * 1024, {"n": 2})
    assert cache.put("k", "c", b"c" * 1024, {"n": 3})
    assert cache.get("k", "a") is None and cache.get("k", "b") is not None and cache.get("k", "c") is not None
    assert not cache.put("k", "big", b"x" * 4096, {})  # larger than the whole cache: not stored
    (tmp_path / "k" / "c.json").write_text("{")  # a torn record: a miss, never an error
    assert cache.get("k", "c") is None
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "file"))
    (tmp_path / "file").write_text("x")  # the cache path is a file: skipped, not a failure
    assert not cache.put("k", "d", b"d", {}) and cache.get("k", "d") is None


@pytest.mark.e2e  # two real ONNX exports
def test_an_imagefolders_teacher_accuracy_is_measured_again_in_a_new_process(tmp_path, monkeypatch):
    """Its images may change between runs: from the disk cache only the ONNX bytes are reused."""
    from .test_imagefolder import write_imagefolder

    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(verify_student, "_teacher_done", [])
    write_imagefolder(tmp_path / "folder")
    recipe = load_recipe(RECIPE, ["data.name=imagefolder", f"data.root={tmp_path / 'folder'}"])
    data = load_data(recipe.data, recipe.seed)
    torch.manual_seed(0)
    teacher = create_model("wrn-10-1", num_classes=data.num_classes, in_channels=data.input_shape[0]).eval()
    measured: list[str] = []

    def accuracy(path):
        measured.append(path.name)
        return 50.0

    def run(name):
        return verify_student._export_teacher(teacher, "wrn-10-1", data, recipe, tmp_path / name, accuracy)

    run("a.onnx")
    verify_student._teacher_done.clear()  # a new process
    run("b.onnx")
    assert measured == ["a.onnx", "b.onnx"]  # measured again
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()  # the export reused
