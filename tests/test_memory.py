"""Memory bounded by the recipe, not the data (issue 21): the issue's two reproductions under a 10 GB address-space
limit (`ulimit -v`), through the real console script, end with exit 2 and one line that gives the estimate and the
limit; an allocation that fails anyway is one line and exit 2, never a traceback; calibration images stream."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer

from compressor.cli.common import handle_errors
from compressor.core import memory

from .conftest import ROOT

LIMIT = 10 * 10**9


def limited(*args: str, home: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The console script under `ulimit -v 10 GB` (a home of its own: libraries keep caches there)."""
    env = {"PATH": "/usr/bin:/bin", "COMPRESSOR_DATA": str(ROOT / "data"), "COLUMNS": "200", "HOME": str(home)}
    exe = Path(sys.executable).with_name("compress")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, timeout=600, env=env,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT)))


def one_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, r.stderr[-3000:]
    return lines[0]


def test_a_huge_batch_on_the_full_dataset_is_refused_with_the_estimate(tmp_path):
    """train.batch_size=100000 on all of Fashion-MNIST grew past 23 GB until the kernel killed it (under a 10 GB
    limit: a RuntimeError traceback and exit 1)."""
    r = limited("distill", str(ROOT / "teachers" / "fashion_mnist-wrn-16-2.pt"), "--recipe",
                str(ROOT / "recipes" / "fashion_at.yaml"), "--out", str(tmp_path / "run"),
                "--set", "train.batch_size=100000", "--set", "device=cpu", home=tmp_path)
    line = one_error(r)
    assert line.startswith("error: train.batch_size: 100000 images a step") and "needs an estimated" in line
    assert "left under the address-space limit (ulimit -v)" in line and "lower train.batch_size" in line
    assert not (tmp_path / "run").exists()


def test_huge_images_are_refused_before_the_student_is_grown(tmp_path):
    """data.image_size=2048 on an ImageFolder went past 12 GB while growing the student."""
    from PIL import Image
    from torchvision.datasets import FashionMNIST

    from compressor.models import create_model

    ds = FashionMNIST(str(ROOT / "data"), train=False, download=False)
    for split in ("train", "test"):
        for label in range(3):
            (tmp_path / "folder" / split / f"c{label}").mkdir(parents=True)
            for i, j in enumerate((ds.targets == label).nonzero().flatten()[:8].tolist()):
                Image.fromarray(ds.data[j].numpy()).convert("RGB").save(tmp_path / "folder" / split / f"c{label}" / f"{i}.png")
    torch.manual_seed(0)
    torch.save(create_model("resnet18", 3, 3).state_dict(), tmp_path / "resnet18.pt")
    r = limited("distill", str(tmp_path / "resnet18.pt"), "--recipe", str(ROOT / "recipes" / "imagefolder_resnet_at.yaml"),
                "--out", str(tmp_path / "run"), "--set", f"data.root={tmp_path / 'folder'}", "--set", "teacher.arch=resnet18",
                "--set", "data.image_size=2048", "--set", "student.arch=null", "--set", "student.size=0.25",
                "--set", "device=cpu", home=tmp_path)
    line = one_error(r)
    assert "on 3x2048x2048 images) needs an estimated" in line and "ulimit -v" in line
    assert "student grown from the teacher" not in r.stderr  # refused before growing


def test_an_allocation_that_fails_anyway_is_one_line_and_exit_2(capsys):
    """A real allocator failure (40 TB: more than any machine of this kind can map), through the CLI's handler."""

    @handle_errors
    def command():
        torch.empty(10**13)

    with pytest.raises(typer.Exit) as stopped:
        command()
    assert stopped.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory (") and "lower train.batch_size" in err and "Traceback" not in err
    assert memory.is_oom(MemoryError()) and not memory.is_oom(RuntimeError("shape mismatch"))


def test_calibration_images_are_decoded_one_batch_at_a_time(tmp_path, monkeypatch):
    """Growing a student reads its 2,048 calibration images as a stream: at most one batch is decoded and held at a
    time (it was all of them at once, with a float32 copy beside them)."""
    from PIL import Image

    from compressor.data import streaming
    from compressor.data.datasets import load_data
    from compressor.recipe.load import load_recipe
    from compressor.students.build import calibration_sample

    for label in range(2):
        for split in ("train", "test"):
            (tmp_path / split / f"c{label}").mkdir(parents=True)
            for i in range(20):
                Image.new("L", (32, 32), color=10 * i + label).save(tmp_path / split / f"c{label}" / f"{i}.png")
    recipe = load_recipe(ROOT / "recipes" / "imagefolder_resnet_at.yaml",
                         [f"data.root={tmp_path}", "data.image_size=32", "data.channels=1", "data.loader=stream",
                          "data.val_fraction=0", "data.workers=0"])
    data = load_data(recipe.data, 0)
    decoded = []
    real = streaming.decode
    monkeypatch.setattr(streaming, "decode", lambda path, channels: decoded.append(path) or real(path, channels))
    n, batches = calibration_sample(recipe, data, batch_size=8)
    assert n == 40
    seen = 0
    for x, y in batches():
        seen += len(y)
        assert len(decoded) == seen and x.shape == (len(y), 1, 32, 32) and x.dtype == torch.float32
    assert seen == 40
