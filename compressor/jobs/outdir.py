"""A job's output: the files it writes (jobs.paths), which it claims, locks, and never takes from anyone else.

`claim` takes the output for this process (core.runlock's flock) and refuses, before anything is written:

- an output that is one of the run's inputs (the teacher, the recipe): never, not even with --force;
- an input inside the output folder, or the output inside the data root: unless --force (the run would write
  beside, or into, what it reads; --force still never replaces an input);
- a file the run would write that no compressor run wrote there (the run record does not list those bytes: the
  user's own student.pt, a report.md they edited), a finished run, an unfinished one (unless --resume): unless
  --force;
- the filesystem root or a home directory as a run folder: always.

With --force the earlier run's files are moved aside (`.compressor-previous/`) before anything is written: when the
new run finishes they are deleted, when it fails with bad input (a full disk, divergence, ...) its own files are
removed and the earlier run's moved back, so an output's files always belong to one run. `claimed` runs a job's
body holding the claim, recording every file it writes, and turns Ctrl-C / SIGTERM / a cancel outside the training
loop into `Interrupted` saying how to go on.
"""

from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

from compressor.core import runlock
from compressor.core.errors import Cancelled, GateFailure, Interrupted, UserError
from compressor.core.fileio import remove_stale_temporaries
from compressor.core.progress import CancelRequested, console
from compressor.core.runrecord import RunRecord
from compressor.jobs.paths import CheckpointPaths, RunPaths

Paths = RunPaths | CheckpointPaths


@dataclass
class Claim:
    """This process's hold on an output: the lock, the run record it writes into, whether it created the folder
    (a run refused after set-up removes what it made and nothing else) and whether an earlier run's files wait
    aside (`--force`)."""

    paths: Paths
    fd: int
    created: Path | None
    record: RunRecord | None = None
    new_record: bool = False
    set_aside: bool = False

    def finished(self) -> None:
        """The run wrote every file (exit 0 or 1): its record says so, the earlier run's files go."""
        self.record.finish("finished")
        if self.set_aside:
            shutil.rmtree(self.paths.previous, ignore_errors=True)

    def failed(self) -> None:
        """The run failed (bad input found late, a full disk, divergence, a crash): with --force its own files go
        and the earlier run's come back; else what it saved stays for --resume, its record saying it failed."""
        if self.record is None:
            return
        try:
            self._undo()
        except (OSError, UserError) as e:  # a full disk may refuse even this; the error that got here matters more
            console.print(f"could not tidy {self.paths.folder} after the failure ({e})")

    def _undo(self) -> None:
        if self.set_aside:
            for name in self.record.files:
                (self.paths.folder / name).unlink(missing_ok=True)
            self.record.path.unlink(missing_ok=True)
            _move_all(self.paths.previous, self.paths.folder)
            shutil.rmtree(self.paths.previous, ignore_errors=True)
        elif self.new_record and not self.record.files:
            self.record.path.unlink(missing_ok=True)
        else:
            self.record.finish("failed")

    def release(self, failed: bool) -> None:
        runlock.release(self.paths.lock, self.fd)
        if failed and self.created is not None:
            _remove_if_empty(self.created)


def _remove_if_empty(folder: Path) -> None:
    """Remove a folder this run created if nothing of substance is in it (only empty files and folders)."""
    try:
        entries = list(folder.rglob("*"))
        if any(e.is_symlink() or (e.is_file() and e.stat().st_size > 0) or not (e.is_file() or e.is_dir())
               for e in entries):
            return
        for e in sorted(entries, key=lambda e: len(e.parts), reverse=True):
            e.unlink() if e.is_file() else e.rmdir()
        folder.rmdir()
    except OSError:  # someone else's file appeared, or permissions: leave it all
        pass


def _move_all(src: Path, dst: Path) -> None:
    """Every file under src to the same place under dst (renames: no copy, no extra space)."""
    for f in sorted(p for p in src.rglob("*") if p.is_file() or p.is_symlink()):
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, target)


def _homes() -> set[Path]:
    homes = {Path.home().resolve()}
    try:
        homes |= {Path(p.pw_dir).resolve() for p in pwd.getpwall() if p.pw_dir not in ("", "/", "/nonexistent")}
    except OSError:  # no passwd database: $HOME alone
        pass
    return homes


def refuse_system_folder(folder: Path) -> None:
    """A run folder is never a filesystem root or a home directory: a run writes a dozen files into it, and a
    later --force would move whatever it holds of theirs aside."""
    where = folder.resolve()
    if where == Path(where.anchor):
        raise UserError(f"--out: {folder} is the filesystem root; give a folder of its own (e.g. runs/NAME)")
    if where in _homes():
        raise UserError(f"--out: {folder} is a home directory; give a folder of its own (e.g. {folder}/runs/NAME)")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def _problems(paths: Paths, *, resume: bool, force: bool, inputs: dict[str, Path], data_root: Path | None,
              inputs_inside: bool) -> list[str]:
    """Why the run may not write into `paths` (one line each), checked before anything is written."""
    folder, problems = paths.folder, []
    for what, given in inputs.items():
        if not given.exists():
            continue
        mine = [n for n in paths.names if (folder / n).exists() and (folder / n).resolve() == given.resolve()]
        if mine:
            problems.append(f"--out: {folder / mine[0]} is the {what} this run reads; the run would replace it with "
                            "its own (give another --out; --force never replaces an input)")
        elif inputs_inside and not force and _inside(given, folder):
            problems.append(f"--out: {folder} holds the {what} {given} this run reads; give the run a folder of its "
                            "own (or --force to write beside it: inputs are never replaced)")
    if data_root is not None and data_root.exists() and not force and _inside(folder, data_root):
        problems.append(f"--out: {folder} is inside the data root {data_root}; the run would write into the dataset "
                        "it reads (give another --out, or --force)")
    if problems or force:
        return problems
    record = RunRecord.read(paths.record, folder)
    for name in paths.names:
        target = folder / name
        if not (target.exists() or target.is_symlink()) or (record is not None and record.owns(name)):
            continue
        why = ("there is no run record" if record is None else "the run record does not list it"
               if name not in record.files else "it changed since the run wrote it")
        problems.append(f"--out: {target} was not written by a compressor run into {folder} ({why}); pass --force "
                        "to replace it (the files it replaces are kept aside until the new run finishes) or give "
                        "another --out")
    if problems:
        return problems
    finished, unfinished = paths.finished.exists(), paths.state.exists()
    if finished and not resume:
        what = "a finished run" if isinstance(paths, RunPaths) else "a finished training"
        shown = f"({paths.finished.name})" if isinstance(paths, RunPaths) else "exists"
        if isinstance(paths, RunPaths):
            problems.append(f"--out: {folder} holds {what} {shown}; pass --force to overwrite it")
        else:
            problems.append(f"--out: {paths.out} exists; pass --force to overwrite it")
    elif unfinished and not resume:
        if isinstance(paths, RunPaths):
            problems.append(f"--out: {folder} holds an unfinished run; pass --resume to continue it or --force to "
                            "start over")
        else:
            problems.append(f"--out: an unfinished training of {paths.out} exists ({paths.state}); pass --resume or "
                            "--force")
    return problems


def claim(paths: Paths, *, resume: bool, force: bool, inputs: dict[str, Path] | None = None,
          data_root: Path | None = None) -> Claim:
    """Create the output's folder if needed, lock it (a second run into it refuses at once, naming this one), check
    what it holds (`_problems`) and take it: a new run record, or --resume's, or --force's with the earlier run's
    files set aside."""
    folder = paths.folder
    run_folder = isinstance(paths, RunPaths)
    if run_folder:
        refuse_system_folder(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out: {folder} exists and is not a directory")
    created = None if folder.exists() else next((p for p in [folder, *folder.parents] if p.parent.exists()), folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out: cannot create {folder} ({e.strerror})") from None
    target = folder if run_folder else paths.out
    try:
        fd = runlock.acquire(paths.lock, "--out", target)
    except UserError:
        if created is not None:
            _remove_if_empty(created)
        raise
    held = Claim(paths, fd, created)
    try:
        problems = _problems(paths, resume=resume, force=force, inputs=inputs or {}, data_root=data_root,
                             inputs_inside=run_folder)
        if problems:
            raise UserError(*problems)
        _check_writable(folder)
        _take(held, resume=resume, force=force)
    except BaseException:
        held.release(failed=True)
        raise
    return held


def _take(held: Claim, *, resume: bool, force: bool) -> None:
    paths = held.paths
    record = RunRecord.read(paths.record, paths.folder)
    if resume and record is not None and (paths.state.exists() or paths.finished.exists()):
        record.state = "running"
        held.record = record
        record.save()
        return
    present = [n for n in paths.names if (paths.folder / n).exists() or (paths.folder / n).is_symlink()]
    if force and present:
        shutil.rmtree(paths.previous, ignore_errors=True)  # left by an interrupted --force run: two runs back
        paths.previous.mkdir(parents=True)
        for name in [*present, *([paths.record.name] if paths.record.exists() else [])]:
            (paths.previous / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(paths.folder / name, paths.previous / name)
        held.set_aside = True
        console.print(f"--force: the earlier run's {len(present)} file(s) are kept in {paths.previous} until this "
                      "run finishes (and put back if it fails)")
    held.record, held.new_record = RunRecord.start(paths.record, paths.folder), True


def claimed(held: Claim | None, body, state: Path):
    """Run `body` holding `held`, recording every file it writes; let go of it however body ends. Ctrl-C, SIGTERM
    or a cancel outside the training loop (which says it itself) becomes `Interrupted` saying how to go on from
    the training `state`, if any; an interrupted run keeps what it wrote (for --resume)."""
    outcome = "failed"
    try:
        if held is None:  # a rank other than 0 of a multi-process run: it writes nothing
            result = body()
        else:
            with held.record.recording():
                result = body()
        outcome = "finished"
        return result
    except GateFailure:
        outcome = "finished"  # a finished run: every artifact is written
        raise
    except Interrupted:
        outcome = "interrupted"
        raise
    except (KeyboardInterrupt, CancelRequested) as e:
        outcome = "interrupted"
        how = (f"{state} holds the training state: run the same command with --resume to go on from it (a finished "
               "training is not repeated)" if state.exists() else "no training state was saved yet: run it again")
        what = "cancelled" if isinstance(e, CancelRequested) else "interrupted"
        error = Cancelled if isinstance(e, CancelRequested) else Interrupted
        raise error(f"{what}; files being written were discarded, finished ones are complete; {how}") from None
    finally:
        if held is not None:
            if outcome == "finished":
                held.finished()
            elif outcome == "failed":
                held.failed()
            held.release(failed=outcome == "failed")


def _check_writable(out: Path) -> None:
    probe = out / ".compressor-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out: {out} is not writable ({e.strerror})") from None


def remove_leftovers(paths: Paths) -> None:
    """The hidden temporaries a killed run left beside the files this run is about to write."""
    by_folder: dict[Path, list[str]] = {}
    for name in paths.names:
        target = paths.folder / name
        by_folder.setdefault(target.parent, []).append(target.name)
    removed = [p for folder, names in by_folder.items() for p in remove_stale_temporaries(folder, names)]
    if removed:
        console.print(f"removed {len(removed)} temporary file(s) left in {paths.folder} by an interrupted run: "
                      + ", ".join(p.name for p in removed))
