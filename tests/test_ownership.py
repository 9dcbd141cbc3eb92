"""A run writes only files it owns (issue 21): through the real CLI, on real files, every reproduction of the
issue as a test, the user's files checked byte for byte (sha256) before and after.

- a folder holding the user's own student.pt and report.md: refused, naming each file; nothing changed;
- the teacher inside --out, even as --out/student.pt: refused; with --force a run beside it leaves it as it was,
  and a teacher at a run file's name is refused even with --force;
- `compress train --out` onto its own recipe: refused even with --force;
- a failed --force run (a full disk, divergence) puts the earlier run back as it was: one run's files, never two;
- the filesystem root and a home directory are refused as --out.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from compressor.core.runrecord import RECORD_NAME, RunRecord

from .conftest import RECIPE, run_cli, run_cli_here, sets

FAST = sets("data.limit_train=64", "data.limit_test=60", "train.batch_size=32", "student.arch=wrn-10-1",
            "verify.batch_sizes=[1]", "device=cpu")


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def errors(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("error: ")]


def distill(cli, teacher, out, *extra):
    return cli("distill", teacher, "--recipe", RECIPE, "--out", out, *FAST, *extra)


@pytest.fixture(scope="module")
def finished_run(small_teacher, tmp_path_factory) -> Path:
    """One finished tiny run (every file a run writes, its run record)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    r = run_cli_here("distill", small_teacher, "--recipe", RECIPE, "--out", out, *FAST)
    assert r.returncode == 0, r.stderr
    return out


def test_the_users_own_files_in_out_are_never_replaced(small_teacher, tmp_path, cli):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "student.pt").write_bytes(b"my own student, trained last week")
    (out / "report.md").write_text("# my notes\n")
    (out / "notes.txt").write_text("not a run file: never in the way\n")
    before = snapshot(out)
    r = distill(cli, small_teacher, out)
    assert r.exit_code == 2, r.output
    assert errors(r.output) == [
        f"error: --out: {out / name} was not written by a compressor run into {out} (there is no run record); pass "
        "--force to replace it (the files it replaces are kept aside until the new run finishes) or give another --out"
        for name in ("student.pt", "report.md")]
    assert snapshot(out) == before


def test_a_file_changed_after_the_run_wrote_it_is_the_users(finished_run, tmp_path, cli, small_teacher):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)  # a copied run keeps its record: its files are still compressor's
    (out / "report.md").write_text("# edited by hand\n")
    before = snapshot(out)
    r = distill(cli, small_teacher, out, "--resume")
    assert r.exit_code == 2
    assert errors(r.output) == [f"error: --out: {out / 'report.md'} was not written by a compressor run into {out} (it "
                                "changed since the run wrote it); pass --force to replace it (the files it replaces are "
                                "kept aside until the new run finishes) or give another --out"]
    assert snapshot(out) == before


def test_the_teacher_is_never_replaced_not_even_with_force(small_teacher, tmp_path, cli):
    out = tmp_path / "run"
    out.mkdir()
    teacher = out / "student.pt"
    shutil.copy(small_teacher, teacher)
    before = snapshot(out)
    for extra in ([], ["--force"]):
        r = distill(cli, teacher, out, *extra)
        assert r.exit_code == 2
        assert errors(r.output) == [f"error: --out: {teacher} is the teacher this run reads; the run would replace it "
                                    "with its own (give another --out; --force never replaces an input)"]
        assert snapshot(out) == before


def test_a_teacher_inside_out_needs_force_and_stays_as_it_was(small_teacher, tmp_path, cli):
    out = tmp_path / "run"
    out.mkdir()
    teacher = out / "teacher.pt"
    shutil.copy(small_teacher, teacher)
    digest = hashlib.sha256(teacher.read_bytes()).hexdigest()
    r = distill(cli, teacher, out)
    assert r.exit_code == 2 and errors(r.output) == [
        f"error: --out: {out} holds the teacher {teacher} this run reads; give the run a folder of its own (or --force "
        "to write beside it: inputs are never replaced)"]
    r = distill(cli, teacher, out, "--force")
    assert r.exit_code == 0, r.output
    assert hashlib.sha256(teacher.read_bytes()).hexdigest() == digest
    report = json.loads((out / "report.json").read_text())
    assert report["teacher"]["path"] == str(teacher)
    record = RunRecord.read(out / RECORD_NAME, out)
    assert record.state == "finished" and "teacher.pt" not in record.files
    assert {"student.pt", "report.json", "metrics.jsonl", "figures/curves.png"} <= set(record.files)
    assert all(record.owns(name) for name in record.files)


def test_train_never_writes_onto_its_recipe(tmp_path, cli):
    recipe = tmp_path / "teacher.yaml"
    recipe.write_text(RECIPE.read_text())
    before = snapshot(tmp_path)
    for extra in ([], ["--force"]):
        r = cli("train", "--recipe", recipe, "--out", recipe, *extra, *sets("data.limit_train=64", "device=cpu"))
        assert r.exit_code == 2
        assert f"error: --out: {recipe} is the recipe this run reads" in r.output
    assert snapshot(tmp_path) == before


def test_train_refuses_a_metrics_file_it_did_not_write(tmp_path, cli):
    (tmp_path / "teacher.metrics.jsonl").write_text('{"my": "own log"}\n')
    before = snapshot(tmp_path)
    r = cli("train", "--recipe", RECIPE, "--out", tmp_path / "teacher.pt", *sets("data.limit_train=64", "device=cpu"))
    assert r.exit_code == 2
    assert f"error: --out: {tmp_path / 'teacher.metrics.jsonl'} was not written by a compressor run" in r.output
    assert snapshot(tmp_path) == before


def test_a_failed_force_run_puts_the_earlier_run_back(finished_run, small_teacher, tmp_path, cli):
    """Divergence (exit 2) after the new run wrote its first files: the folder holds the earlier run again."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = snapshot(out)
    r = distill(cli, small_teacher, out, "--force", "--set", "train.lr=1e30", "--set", "train.log_every=1")
    assert r.exit_code == 2 and "training diverged" in r.output, r.output
    assert snapshot(out) == before
    assert not (out / ".compressor-previous").exists()


def test_a_force_run_on_a_full_disk_keeps_the_earlier_run_whole(finished_run, small_teacher, tmp_path, cli):
    """The issue's reproduction: a --force run into a folder on a full disk. The earlier run's metrics.jsonl must
    not be replaced by the failed run's epoch while its report.json stays."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    used = sum(p.stat().st_size for p in finished_run.rglob("*") if p.is_file())
    size = used + 60_000  # the earlier run and a little more: the new run's first state does not fit
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        out = mnt / "run"
        shutil.copytree(finished_run, out)
        before = snapshot(out)
        r = distill(cli, small_teacher, out, "--force")
        assert r.exit_code == 2 and "no space left on device" in r.output, r.output
        assert snapshot(out) == before
        assert not list(out.glob(".*.tmp")) and not (out / ".compressor-previous").exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_force_run_that_finishes_replaces_the_earlier_run_as_one(finished_run, small_teacher, tmp_path, cli):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    old = RunRecord.read(out / RECORD_NAME, out)
    r = distill(cli, small_teacher, out, "--force", "--set", "seed=1")
    assert r.exit_code == 0, r.output
    new = RunRecord.read(out / RECORD_NAME, out)
    assert new.run != old.run and new.state == "finished" and not (out / ".compressor-previous").exists()
    assert all(new.owns(name) for name in new.files)
    assert json.loads((out / "report.json").read_text())["distillation"]["history"][0]["train_loss"] != \
        json.loads((finished_run / "report.json").read_text())["distillation"]["history"][0]["train_loss"]


def test_the_filesystem_root_and_a_home_are_refused(small_teacher, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    for out, says in (("/", "--out: / is the filesystem root"), (home, f"--out: {home} is a home directory")):
        # a missing teacher: code that claimed --out before checking it would still fail, but only after writing
        r = run_cli("distill", tmp_path / "missing.pt", "--recipe", RECIPE, "--out", out, env={"HOME": str(home)})
        assert r.returncode == 2 and errors(r.stderr) == [f"error: {says}; give a folder of its own " + (
            "(e.g. runs/NAME)" if out == "/" else f"(e.g. {home}/runs/NAME)")], r.stderr
    assert not os.path.exists("/.compressor.lock")
    assert {p.name for p in home.iterdir()} <= {".cache", ".config"}  # what libraries keep in a home, no run file
