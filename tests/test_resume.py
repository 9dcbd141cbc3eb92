"""Nothing lost: a killed run resumes to the same result, and no artifact is ever seen half-written.

Real `compress` subprocesses on a Fashion-MNIST subset, killed with SIGKILL or SIGTERM at a moment read from
the run's own files (the training state's epoch and step), never after a blind sleep.
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
import pytest
import torch

from compressor.core.fileio import read_jsonl, remove_stale_temporaries

from .conftest import RECIPE, ROOT, run_cli_here, sets

# 216 training images in batches of 24: 9 steps an epoch, a checkpoint after every second step. Small
# WRN-10-1 models keep the three runs (killed, resumed, uninterrupted) and their exports short.
RESUMABLE = ("data.limit_train=240", "data.limit_test=100", "train.batch_size=24", "train.checkpoint_every=2",
             "verify.batch_sizes=[1,4]", "student.arch=wrn-10-1", "device=cpu")


def start_cli(*args) -> subprocess.Popen:
    """The console script in the background; its output goes to a file (a pipe nobody reads could fill up)."""
    env = {**os.environ, "COMPRESSOR_DATA": str(ROOT / "data"), "COLUMNS": "200"}
    exe = Path(sys.executable).with_name("compress")
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([str(exe), *map(str, args)], stdout=log, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=env)
    proc.log = log
    return proc


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    """Wait for a background run; return everything it printed."""
    proc.wait(timeout)
    proc.log.seek(0)
    return proc.log.read()


def saved_position(state_path: Path) -> tuple[int, int] | None:
    """(epochs completed, steps into the next one) of the last saved training state, or None."""
    if not state_path.exists():
        return None
    state = torch.load(state_path, map_location="cpu", weights_only=True)  # renamed into place: always whole
    return state["epoch"], state["step"]


def wait_for(proc: subprocess.Popen, condition, timeout: float = 300.0, poll=None):
    """Poll `condition()` until it is truthy; `poll()` runs on every round (to inspect the run's files)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if poll:
            poll()
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before the moment to stop it:\n{finish(proc)[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("timed out waiting for the run")


def kill_inside_an_epoch(proc: subprocess.Popen, state_path: Path, poll=None) -> tuple[int, int]:
    """SIGKILL the run at a mid-epoch checkpoint after its first epoch; returns that checkpoint's (epoch, step).

    Seeing the checkpoint and killing the run are two acts, and the run may save the end of its epoch in between
    (the kill then lands on an epoch boundary). So it is frozen first (SIGSTOP), its state read again, and killed
    only if that state is still mid-epoch; else it goes on (SIGCONT) to its next checkpoint."""
    def inside() -> bool:
        position = saved_position(state_path)
        return position is not None and position[0] >= 1 and position[1] > 0

    while True:
        wait_for(proc, inside, poll=poll)
        proc.send_signal(signal.SIGSTOP)
        if inside():
            position = saved_position(state_path)
            proc.send_signal(signal.SIGKILL)
            finish(proc)
            assert proc.returncode == -signal.SIGKILL
            return position
        proc.send_signal(signal.SIGCONT)


class ArtifactWatch:
    """Checks every version of student.onnx / report.json / student.pt that appears while a run writes them."""

    def __init__(self, out: Path):
        self.out, self.seen = out, {}

    def __call__(self) -> None:
        for name, check in (("student.onnx", lambda p: onnx.checker.check_model(onnx.load(p))),
                            ("report.json", lambda p: json.loads(p.read_text())),
                            ("student.pt", lambda p: torch.load(p, weights_only=True)["state_dict"])):
            path = self.out / name
            try:
                stamp = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if self.seen.get(name) != stamp:
                check(path)  # raises on a truncated file
                self.seen[name] = stamp


def student_checkpoint(out: Path) -> dict:
    return torch.load(out / "student.pt", weights_only=True)


class StopOnceTrained:
    """SIGTERM a run as soon as its student.pt exists: its training is complete and uninterrupted, and the
    export that follows (which the resumed run proves) need not be paid for twice. Also proves that SIGTERM
    outside the training loop exits 130 without leaving a temporary file."""

    def __init__(self, proc: subprocess.Popen, out: Path):
        self.proc, self.out, self.sent = proc, out, False

    def __call__(self) -> None:
        if not self.sent and (self.out / "student.pt").exists():
            self.proc.send_signal(signal.SIGTERM)
            self.sent = True


def test_distill_killed_in_epoch_2_resumes_to_the_same_student(small_teacher, tmp_path, cli):
    args = ["distill", small_teacher, "--recipe", RECIPE, *sets(*RESUMABLE, "train.epochs=3")]
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    baseline = start_cli(*args, "--out", straight)  # the uninterrupted run, alongside
    stop_baseline = StopOnceTrained(baseline, straight)

    # kill -9 at a checkpoint inside epoch 2 (or 3)
    proc = start_cli(*args, "--out", killed)
    epoch, step = kill_inside_an_epoch(proc, killed / "train_state.pt", poll=stop_baseline)
    assert saved_position(killed / "train_state.pt") == (epoch, step) and epoch in (1, 2) and step > 0
    assert [r["epoch"] for r in read_jsonl(killed / "metrics.jsonl")] == list(range(1, epoch + 1))
    assert not (killed / "student.onnx").exists() and not (killed / "report.json").exists()

    # the same command without --resume refuses to start over on top of it
    r = cli(*args, "--out", killed)
    assert r.exit_code == 2 and "unfinished run; pass --resume" in r.output

    # what a kill between a write and its rename leaves: the resumed run removes it (and nothing else)
    leftover = killed / ".student.pt.k3x9q2ab.tmp"
    leftover.write_bytes(b"half a checkpoint")
    (killed / "notes.tmp").write_text("the user's own file\n")

    # --resume finishes it; every artifact seen while it writes is whole
    watch = ArtifactWatch(killed)
    proc = start_cli(*args, "--out", killed, "--resume")
    while proc.poll() is None:
        watch()
        stop_baseline()
        time.sleep(0.05)
    log = finish(proc)
    assert proc.returncode == 0, log[-3000:]
    assert f"resuming from epoch {epoch + 1} step {step}" in log
    # ours, and any the kill -9 itself left mid-write (a checkpoint being saved): at least 1, all of them hidden
    # temporaries of the run's files, none left behind
    removed = re.search(r"removed (\d+) temporary file\(s\)", log)
    assert removed and int(removed[1]) >= 1 and not leftover.exists(), log[-3000:]
    assert not [p.name for p in killed.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    assert (killed / "notes.tmp").read_text() == "the user's own file\n"
    watch()
    assert {"student.onnx", "report.json", "student.pt"} <= set(watch.seen)
    for name in ("student.pt", "student.onnx", "teacher.onnx", "report.json", "report.md", "metrics.jsonl"):
        assert (killed / name).is_file(), name
    report = json.loads((killed / "report.json").read_text())
    assert report["distillation"]["resumed_from_epoch"] == epoch + 1

    while baseline.poll() is None:
        stop_baseline()
        time.sleep(0.05)
    log = finish(baseline)
    assert baseline.returncode in (0, 130), log[-3000:]  # 130: stopped after training, during the export
    assert not list(straight.glob(".*.tmp"))

    resumed, uninterrupted = student_checkpoint(killed), student_checkpoint(straight)
    accuracy = resumed["metrics"]["test_accuracy"], uninterrupted["metrics"]["test_accuracy"]
    print(f"test accuracy: resumed {accuracy[0]:.2f}%, uninterrupted {accuracy[1]:.2f}%")
    assert accuracy[0] == accuracy[1] == report["student"]["accuracy"]
    a, b = resumed["state_dict"], uninterrupted["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "bit-identical student weights"
    # the interrupted epoch's metrics include the steps before the kill: the whole history matches, timings aside
    timing = {"train_seconds", "images_per_second"}
    strip = lambda rows: [{k: v for k, v in row.items() if k not in timing} for row in rows]  # noqa: E731
    assert strip(report["distillation"]["history"]) == strip(read_jsonl(straight / "metrics.jsonl"))
    assert strip(read_jsonl(killed / "metrics.jsonl")) == strip(read_jsonl(straight / "metrics.jsonl"))


def test_train_sigterm_saves_state_says_how_to_resume_and_resumes(tmp_path, cli):
    args = ["train", "--recipe", RECIPE, *sets(*RESUMABLE, "teacher.arch=wrn-10-1", "teacher.epochs=2")]
    stopped, straight = tmp_path / "stopped" / "teacher.pt", tmp_path / "straight" / "teacher.pt"
    state = stopped.with_name("teacher.pt.state")
    baseline_run = start_cli(*args, "--out", straight)  # the uninterrupted run, alongside

    proc = start_cli(*args, "--out", stopped)
    wait_for(proc, lambda: saved_position(state))  # training is under way: the first checkpoint exists
    proc.send_signal(signal.SIGTERM)
    log = finish(proc)
    assert proc.returncode == 130, log[-3000:]
    assert "state saved to" in log and "--resume" in log and "Traceback" not in log
    assert saved_position(state) != (2, 0) and not stopped.exists()

    r = cli(*args, "--out", stopped)
    assert r.exit_code == 2 and "pass --resume or --force" in r.output
    r = cli(*args, "--out", stopped, "--resume", "--set", "train.lr=0.05")  # another run: refused, state kept
    assert r.exit_code == 2 and "cannot resume: optimizer changed since it was written" in r.output

    r = run_cli_here(*args, "--out", stopped, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    log = finish(baseline_run)
    assert baseline_run.returncode == 0, log[-3000:]

    a, b = (torch.load(p, weights_only=True) for p in (stopped, straight))
    assert a["metrics"]["test_accuracy"] == b["metrics"]["test_accuracy"]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in b["state_dict"])


def test_a_write_killed_midway_leaves_the_old_file_whole(tmp_path):
    """SIGKILL inside atomic_path, after half the bytes are written: the target still holds the old bytes."""
    target = tmp_path / "student.onnx"
    target.write_bytes(b"the previous model")
    script = (
        "import os, signal, sys\n"
        "from compressor.core.fileio import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp, open(tmp, 'wb') as f:\n"
        "    f.write(b'x' * 1_000_000); f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    r = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True)
    assert r.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"the previous model"
    (leftover,) = tmp_path.glob(".student.onnx.*.tmp")  # the half-written bytes never had the real name
    assert leftover.stat().st_size == 1_000_000

    # the next run that writes student.onnx there removes exactly that leftover
    others = [tmp_path / ".report.json.abcd1234.tmp.keep", tmp_path / ".notes.abcd1234.tmp", tmp_path / "x.tmp"]
    for other in others:
        other.write_text("not a leftover of student.onnx")
    assert remove_stale_temporaries(tmp_path, ["student.onnx", "report.json"]) == [leftover]
    assert not leftover.exists() and all(other.exists() for other in others)
    assert target.read_bytes() == b"the previous model"


def test_divergence_names_the_step_and_terms_and_keeps_the_last_good_state(small_teacher, tmp_path, cli):
    """A huge learning rate: the run stops at the first non-finite loss; the saved state is the last finite one."""
    out = tmp_path / "run"
    r = cli("distill", small_teacher, "--recipe", RECIPE, "--out", out,
            *sets(*RESUMABLE, "train.lr=1e6", "train.checkpoint_every=1"))
    assert r.exit_code == 2, r.output
    (line,) = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert "training diverged at epoch 1 step" in line
    # caught where the logits pass train.max_logit (here ~1e9 at step 2, every loss term still finite) or, at the
    # latest, where the loss or the weights stop being finite
    assert ("the logits grew to |z| = " in line and "beyond train.max_logit = 1000" in line
            or "the loss is not finite (total=" in line or "the weights are no longer finite (the loss was total=" in line)
    for term in ("kd=", "ce=", "at.group0="):
        assert term in line
    assert "lower train.lr" in line and "Traceback" not in r.output
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert f"is kept in {out / 'train_state.pt'}" in line and f"epoch 1 step {state['step']}" in line
    assert not (out / "student.onnx").exists() and not (out / "report.json").exists()
