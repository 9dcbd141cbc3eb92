"""Data-parallel training (torchrun + gloo on the CPU) computes what one process computes with the global batch.

The equivalence test runs the real training loop (tests/ddp_fit.py: recipe, data, `distributed.setup`, `fit`) on
a Fashion-MNIST subset: 2 processes x 32 images against 1 process x 64 images, same seed, AT + KD + CE, lr 0.1,
momentum 0.9, for 4 steps, the 2-process run interrupted after its first epoch and resumed.

Tolerance. With identical mechanics the only difference is the order of floating-point sums (two half-batch
gradients averaged by DDP against one full-batch mean). In float32 that order moved the losses by 4e-5 relative
after 4 steps on an AVX2 machine and by 1.05e-4 on an AVX-512 one (other kernels round differently), too close to
any tolerance that still means something. So the check trains in float64 (`ddp_fit.py --float64`): measured there,
the loss terms agree to 3e-15 relative and the parameters to 8e-15 (L2, per tensor). The test allows 1e-9 on both,
five orders of magnitude of headroom for other kernels, and still eight below a real bug: a loss that scaled with
the world size (doubling the AT weight and halving CE's) moved the parameters by 2.3 relative in the same 4 steps.

BatchNorm. Each process normalises with its own share's batch statistics, as DDP always does (SyncBatchNorm,
`train.sync_bn`, exists only on CUDA), so with BatchNorm 2 x 32 is not 1 x 64: measured with 320 images the
first epoch's loss differed by 3% and the parameters drifted apart. The equivalence test therefore swaps the
student's BatchNorm for GroupNorm, whose statistics are per image; the end-to-end test runs the real BatchNorm
student through `compress distill --nproc 2`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compressor.core import distributed
from compressor.core.errors import UserError
from compressor.data.batches import Batches
from compressor.data.transform import Normalize
from compressor.data.datasets import load_data
from compressor.recipe.load import load_recipe
from compressor.recipe.schema import DataConfig

from .conftest import RECIPE, ROOT, run_cli, sets

WORKER = ROOT / "tests" / "ddp_fit.py"
LOSS_REL = PARAM_REL = 1e-9  # float64: measured 3e-15 / 8e-15 (see above)


def _run(args: list, nproc: int) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else [sys.executable]
    env = {**os.environ, "COMPRESSOR_DATA": str(ROOT / "data"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*launcher, str(WORKER), *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_rank_shares_make_up_the_single_process_batches():
    """Each rank's share of every global batch, augmentation included, is its slice of the one-process batch."""
    data = load_data(DataConfig(limit_train=150, val_fraction=0.0, limit_test=1), seed=3)
    norm = Normalize(data.mean, data.std, torch.device("cpu"))
    for batch, drop_last in ((64, True), (64, False)):  # 150 images: two full batches and a partial one
        kw = dict(train=True, pad=4, flip=True, seed=3, drop_last=drop_last)
        whole = list(Batches(data.train, batch, norm, **kw).iterate(epoch=1))
        shares = [list(Batches(data.train, batch, norm, rank=r, world=2, **kw).iterate(epoch=1)) for r in range(2)]
        assert len(shares[0]) == len(shares[1]) == len(whole) == (2 if drop_last else 3)
        for (x, y), (x0, y0), (x1, y1) in zip(whole, *shares):
            assert len(y0) == len(y1) or not drop_last
            assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_setup_checks_the_recipe_against_the_world(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    cpu = torch.device("cpu")
    with pytest.raises(UserError, match="train.batch_size: 127 is the global batch and must divide evenly over 2"):
        distributed.setup(cpu, load_recipe(RECIPE, ["train.batch_size=127"]).train)
    with pytest.raises(UserError, match="train.sync_bn: SyncBatchNorm needs CUDA"):
        distributed.setup(cpu, load_recipe(RECIPE, ["train.sync_bn=true"]).train)
    assert not distributed.active()  # nothing was joined
    # the terms that are not data-parallel yet say so themselves (distill.objective), before any data is loaded
    from compressor.distill.objective import check_data_parallel

    with pytest.raises(UserError, match="distill.grad_at: not supported with several processes yet"):
        check_data_parallel(load_recipe(RECIPE, ["distill.grad_at.enabled=true"]).distill, 2)
    check_data_parallel(load_recipe(RECIPE, ["distill.grad_at.enabled=true"]).distill, 1)


def test_sync_batchnorm_is_undone_for_export():
    """train.sync_bn swaps BatchNorm for SyncBatchNorm in place; `unwrap` restores the exportable model exactly."""
    from compressor.models import create_model

    model = create_model("wrn-16-1", 10, 1)
    model.train()(torch.randn(8, 1, 28, 28))  # running statistics that differ from the defaults
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    distributed.unwrap(model)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert model.training  # the mode is kept


def test_nproc_with_an_indivisible_batch_is_a_clean_error(cli, tmp_path):
    r = cli("distill", tmp_path / "teacher.pt", "--recipe", RECIPE, "--nproc", "3", "--out", tmp_path / "out")
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        "error: train.batch_size: 128 is the global batch and must divide evenly over 3 processes (e.g. 126)"
    ]
    assert not (tmp_path / "out").exists()


def _grey_jpeg_folder(root: Path) -> Path:
    """root/{train,test}/<class>/*.jpg: real Fashion-MNIST images as 28x28 grey JPEGs, all 10 classes."""
    from torchvision.datasets import FashionMNIST

    ds = FashionMNIST(str(ROOT / "data"), train=True, download=False)
    for label in range(10):
        idx = (ds.targets == label).nonzero().flatten()[:16].tolist()
        for split, part in (("train", idx[:14]), ("test", idx[14:])):
            (root / split / f"c{label}").mkdir(parents=True)
            for i, j in enumerate(part):
                ds[j][0].save(root / split / f"c{label}" / f"{i}.jpg", quality=95)
    return root


@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_two_processes_equal_one_process_with_the_global_batch(loader, tmp_path, teacher_ckpt):
    common = [
        "--norm", "group", "--float64", "--set", "data.limit_train=128", "--set", "data.val_fraction=0", "--set", "data.limit_test=10",
        "--set", "train.batch_size=64", "--set", "train.schedule=constant", "--set", "train.log_every=1",
    ]
    if loader == "stream":  # an ImageFolder of JPEGs decoded by DataLoader workers: each rank decodes its share
        folder = _grey_jpeg_folder(tmp_path / "jpegs")
        common += [a for s in ("data.name=imagefolder", f"data.root={folder}", "data.image_size=28", "data.channels=1",
                               "data.loader=stream", "data.augment=pad_crop", "data.workers=1") for a in ("--set", s)]
    one, two = tmp_path / "one", tmp_path / "two"
    _run([one, teacher_ckpt, *common, "--set", "train.epochs=2"], nproc=1)
    _run([two, teacher_ckpt, *common, "--set", "train.epochs=1"], nproc=2)
    _run([two, teacher_ckpt, *common, "--set", "train.epochs=2", "--resume"], nproc=2)

    # one set of artifacts, written by rank 0 alone: one metrics line per epoch, counting both ranks' images
    assert sorted(p.name for p in two.iterdir()) == ["metrics.jsonl", "params.pt", "train_state.pt"]
    rows_one, rows_two = _metrics(one / "metrics.jsonl"), _metrics(two / "metrics.jsonl")
    assert [r["epoch"] for r in rows_two] == [1, 2]
    assert [r["train_images"] for r in rows_two] == [128, 128]

    for a, b in zip(rows_one, rows_two, strict=True):
        assert a["train_loss"].keys() == b["train_loss"].keys() == {"ce", "kd", "at.group0", "at.group1", "at.group2", "total"}
        for k, v in a["train_loss"].items():
            assert b["train_loss"][k] == pytest.approx(v, rel=LOSS_REL), (a["epoch"], k)
        assert abs(a["train_accuracy"] - b["train_accuracy"]) <= 100 / 128  # at most one image decided otherwise

    state = torch.load(two / "train_state.pt", weights_only=True)  # the resumed run's, continued from epoch 1
    assert state["epoch"] == 2 and [h["epoch"] for h in state["history"]] == [1, 2]
    p_one = torch.load(one / "params.pt", weights_only=True)
    p_two = torch.load(two / "params.pt", weights_only=True)
    for k, v in p_one.items():
        rel = ((p_two[k] - v).norm() / v.norm().clamp_min(1e-12)).item()
        assert rel < PARAM_REL, (k, rel)


@pytest.mark.slow
def test_distill_nproc_2_writes_one_set_of_artifacts(tmp_path, teacher_ckpt):
    out = tmp_path / "run"
    # the student grown from the teacher: every rank prunes it identically (the structures must match for DDP)
    r = run_cli("distill", teacher_ckpt, "--recipe", RECIPE, "--out", out, "--nproc", "2", "--student-size", "0.25",
                *sets("data.limit_train=256", "data.limit_test=100", "train.batch_size=64", "verify.batch_sizes=[1]"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = {p.name for p in out.iterdir()} - {"figures"}  # figures: an optional extra of the report
    assert files == {".compressor-run.json", "student.pt", "student.onnx", "teacher.onnx", "report.json", "report.md",
                     "metrics.jsonl", "train_state.pt"}
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["student"]["sizing"]["init"] == "teacher" and report["student"]["params"] <= 0.25 * report["teacher"]["params"]
    assert report["distributed"] == {"world_size": 2, "backend": "gloo", "global_batch": 64, "per_rank_batch": 32,
                                     "lr": 0.1, "sync_bn": False}
    assert "batch 64, lr 0.1 (global; 2 processes × 32, gloo)" in (out / "report.md").read_text(encoding="utf-8")
    (row,) = _metrics(out / "metrics.jsonl")  # one line: rank 1 wrote nothing
    assert row["train_images"] == report["data"]["train"] // 64 * 64
    assert r.stdout.count("test accuracy (PyTorch)") + r.stderr.count("test accuracy (PyTorch)") == 1
