"""Shared fixtures: the real CLI in-process (CliRunner) and as a subprocess, and small real data."""

from __future__ import annotations

import gc
import inspect
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from compressor.cli import app
from compressor.core.memory import fewer_collections

ROOT = Path(__file__).resolve().parents[1]
fewer_collections()  # as the CLI's own process does (compressor.core.memory): the tests run its jobs in-process
RECIPE = ROOT / "tests" / "smoke.yaml"  # scratch WRN-16-1 student; tests set their own sizes
# A smoke budget: a few hundred real Fashion-MNIST images, one epoch, short latency runs.
SMOKE = [
    "data.limit_train=640", "data.limit_test=300", "train.epochs=1", "teacher.epochs=1",
    "verify.min_runs=10", "verify.min_seconds=0", "verify.warmup=2", "verify.min_speedup=null",
    "verify.max_accuracy_drop=null",
]


# The suite's two tiers. `make test-fast` runs the unit tier: functions on small tensors and files, a few training
# steps at most. A test is `e2e` (the other tier, which `make test` adds) when it runs a whole job or a server: it
# calls the CLI (in a subprocess or in-process), uses a trained or saved teacher, starts a server, a database or a
# cluster, or is marked slow. Marked here from what the test uses, so a new test lands in its tier by itself.
E2E_FIXTURES = {"cli", "teacher_ckpt", "small_teacher", "service", "ci_run", "catalogue", "cluster", "home", "postgres",
                "db_url", "s3", "compose"}
E2E_CALLS = ("run_cli(", "run_cli_here(", "run_case(", "subprocess.", "limited(", "distill(", "train_teacher(", "fit(", "ablate(")


def _is_e2e(item: pytest.Item) -> bool:
    if item.get_closest_marker("slow") or item.get_closest_marker("gpu") or E2E_FIXTURES & set(item.fixturenames):
        return True
    fn = getattr(item, "function", None)
    try:
        source = inspect.getsource(fn) if fn is not None else ""
    except (OSError, TypeError):
        source = ""
    return any(call in source for call in E2E_CALLS)


_CACHE_CREATED: list[str] = []


def pytest_configure(config):
    # One cache folder (core.cache: the teacher's ONNX export and accuracy) for the whole run, shared by the xdist
    # workers (they inherit the controller's environment) and every CLI and server the tests start; never the
    # user's own ~/.cache, whose entries from other versions of the tree would hide a change here.
    if "PYTEST_XDIST_WORKER" not in os.environ:
        os.environ["COMPRESSOR_CACHE"] = tempfile.mkdtemp(prefix="compressor-test-cache-")
        _CACHE_CREATED.append(os.environ["COMPRESSOR_CACHE"])
    # A suite started in the background by a shell without job control (`make test &` in a script, nohup) ignores
    # SIGINT, and every CLI it starts would inherit that: the tests' Ctrl-C (SIGINT) would do nothing. A handler,
    # unlike an ignore, is reset to the default in a child process, as a terminal's shell would start it.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_unconfigure(config):
    for folder in _CACHE_CREATED:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _is_e2e(item):
            item.add_marker(pytest.mark.e2e)


def sets(*overrides: str) -> list[str]:
    out = []
    for o in (*SMOKE, *overrides):
        out += ["--set", o]
    return out


@pytest.fixture(autouse=True, scope="module")
def _frozen_heap():
    """What is alive when a test file starts (torch, onnxscript's ~500 translations, earlier files' modules) is
    moved out of the cyclic collector's sight (gc.freeze). A worker holds ~750k objects after a few files, and each
    full collection walked all of them: 91 collections, 68 s of the two workers' time in a full run (measured with
    a gc.callbacks hook, AMD 2-core machine, 2026-12-06); a frozen heap's full collection takes ~0.01 s instead of
    ~0.3 s. Objects are still freed by reference counting; only a cycle among frozen objects is never collected,
    which a test process can afford."""
    gc.collect()
    gc.freeze()
    yield


@pytest.fixture(autouse=True)
def _data_env(monkeypatch):
    monkeypatch.setenv("COMPRESSOR_DATA", str(ROOT / "data"))
    monkeypatch.setenv("COLUMNS", "200")
    # train.amp auto is bf16 on CPUs with native bf16: the suite trains fp32 everywhere, so its numbers are the
    # same on AVX2 and AVX-512 machines (tests/test_precision.py forces both answers)
    monkeypatch.setenv("COMPRESSOR_CPU_BF16", "0")


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None):
    """The real console script in a subprocess (what a user or CI pipeline runs)."""
    full_env = {**os.environ, "COMPRESSOR_DATA": str(ROOT / "data"), "COLUMNS": "200", "COMPRESSOR_CPU_BF16": "0",
                **(env or {})}
    exe = Path(sys.executable).with_name("compress")
    # the installed console script; where the package runs from the tree (PYTHONPATH, the GPU check), its module
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "compressor"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, cwd=cwd or ROOT,
                          timeout=timeout, env=full_env)


def shared_once(tmp_path_factory, name: str, build) -> Path:
    """A folder `build(folder)` fills once for the whole run, shared by the xdist workers (each would otherwise
    build its own): the first worker builds it under a file lock, the others wait for it and reuse it."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # the run's base folder, above each worker's own
    folder, done = root / f"shared-{name}", root / f"shared-{name}.done"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def run_cli_here(*args: str, env: dict | None = None, **_ignored) -> subprocess.CompletedProcess:
    """The same CLI (the Typer app the console script runs) in this process: for tests of what a job does, not of
    the process around it. A job costs ~7 s here against ~18 s in a new process (importing torch, onnxscript and
    matplotlib, building the exporter's tables): the suite runs ~40 of them. Tests of signals, exit codes of the
    console script, tracebacks, rlimits and torchrun keep `run_cli`. An exception the CLI does not turn into an
    exit code fails the test with its traceback (catch_exceptions=False)."""
    runner = CliRunner(env={"COMPRESSOR_DATA": str(ROOT / "data"), "COLUMNS": "200", "COMPRESSOR_CPU_BF16": "0",
                            **(env or {})})
    r = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return subprocess.CompletedProcess(list(args), r.exit_code, r.stdout, r.stderr)  # what run_cli returns


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A real WRN-16-2 teacher trained by `compress train` on a Fashion-MNIST subset (one epoch); trained once for
    the whole run. Tests read it and copy it; none changes it."""

    def build(folder: Path) -> None:
        r = run_cli_here("train", "--recipe", RECIPE, "--out", folder / "teacher.pt", *sets("data.limit_train=1280"))
        assert r.returncode == 0, r.stderr

    return shared_once(tmp_path_factory, "teacher", build) / "teacher.pt"


@pytest.fixture(scope="session")
def small_teacher(tmp_path_factory) -> Path:
    """A seeded, untrained WRN-10-1 saved as a Fashion-MNIST compressor checkpoint: for tests that need a
    valid, fixed teacher file (resuming, bad inputs), not a good one."""
    from compressor.data.datasets import NORMALISATION
    from compressor.models import checkpoint as ckpt_io
    from compressor.models import create_model

    torch.manual_seed(0)
    mean, std = NORMALISATION["fashion_mnist"]
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    ck = ckpt_io.model_checkpoint(create_model("wrn-10-1", 10, 1), arch="wrn-10-1", classes=classes,
                                  input_shape=(1, 28, 28), mean=mean, std=std, dataset="fashion_mnist", kind="teacher")
    path = tmp_path_factory.mktemp("small_teacher") / "teacher.pt"
    ckpt_io.save(ck, path)
    return path


def check_speedups(slow: dict, fast: dict, ratio: dict, interval: dict, rounds: int) -> None:
    """What a report's speed-ups of `fast` over `slow` (latency sections {"<batch>": stats}) must satisfy on any
    machine, however noisy: each is the ratio of the two p50s, its interval the lowest and highest ratio of one
    round's medians, and — since a pooled median lies within its rounds' medians — the ratio within the bounds
    those medians allow. (It may lie outside the paired rounds' interval when the rounds disagree: measured 1.259
    against an interval up to 1.208 on the shared 2-core machine, so that is not asserted.)"""
    assert set(ratio) == set(interval) == set(fast) & set(slow)
    for b in ratio:
        s, f = slow[b]["round_p50_ms"], fast[b]["round_p50_ms"]
        assert len(s) == len(f) == rounds
        assert ratio[b] == slow[b]["p50_ms"] / fast[b]["p50_ms"]
        paired = [a / c for a, c in zip(s, f)]
        assert interval[b] == [min(paired), max(paired)]
        assert min(s) / max(f) * (1 - 1e-9) <= ratio[b] <= max(s) / min(f) * (1 + 1e-9)  # float rounding only
