"""What every command shares: the --set/--device options, and turning errors into messages + exit codes."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import traceback
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from compressor.core.errors import EXIT_GATE, EXIT_INTERRUPTED, EXIT_USAGE, CompressorError
from compressor.core.memory import is_oom, oom_message
from compressor.core.progress import console

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a recipe key: dotted.key=value (repeatable), validated like the file."),
]
DeviceOption = Annotated[Optional[Literal["auto", "cpu", "cuda"]],
                         typer.Option("--device", help="auto | cpu | cuda (default: the recipe's, auto)")]
RecipeOption = Annotated[Path, typer.Option("--recipe", "-r", help="Recipe YAML file.")]


class _PlainFlags:
    """Help lists an on/off flag as plain `--resume`, not `--resume <bool>` (Typer shows every option's type, a
    flag's and --help's too, unless the option has a metavar; an empty one shows nothing)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class Command(_PlainFlags, TyperCommand):
    """Every `compress` subcommand: a TyperCommand whose flags show without a type, and whose errors become
    messages and exit codes (`errors_handled`) once, here, for every command."""

    def invoke(self, ctx):
        with errors_handled():
            return super().invoke(ctx)


class Group(_PlainFlags, TyperGroup):
    """`compress` and `compress recipe`: a TyperGroup whose flags (--help, --version) show without a type."""


def version_callback(value: bool) -> None:
    """`--version`: print `compress <version>` (the installed package's, else the source tree's) and exit 0."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("compressor")
    except PackageNotFoundError:  # run from a source tree that is not installed
        from compressor import __version__ as number
    typer.echo(f"compress {number}")
    raise typer.Exit(0)


@contextlib.contextmanager
def errors_handled():
    """Run a command; a CompressorError becomes one line per problem and its exit code, never a traceback
    (unless COMPRESSOR_DEBUG=1). An OSError that escaped (a file the system refused) and running out of memory
    are bad input too: one line, exit 2. Ctrl-C and SIGTERM exit 130 (the training loop saves its state first)."""
    try:
        with _sigterm_interrupts():
            yield
    except CompressorError as e:
        _report(e.problems, "error" if e.exit_code != EXIT_GATE else "failed")
        raise typer.Exit(e.exit_code) from None
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        _report([f"{where}{e.strerror or e}"], "error")
        raise typer.Exit(EXIT_USAGE) from None
    except (MemoryError, RuntimeError) as e:  # out of memory anywhere (an estimate is an estimate): exit 2
        if not is_oom(e):
            raise
        _report([oom_message(e)], "error")
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        _report(["interrupted (files being written were discarded; finished ones are complete)"], "error")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def handle_errors(fn):
    """`errors_handled` around a function (for code that runs a command's body outside `Command`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with errors_handled():
            return fn(*args, **kwargs)

    return wrapper


def _report(problems: list[str], label: str) -> None:
    if os.environ.get("COMPRESSOR_DEBUG") == "1":
        traceback.print_exc()
    for problem in problems:
        console.print(f"[bold red]{label}:[/] {problem}", markup=True, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (a CI job cancelled, `docker stop`) acts like Ctrl-C, so temporary files are cleaned up and the
    exit code is 130 also outside the training loop, which installs its own handler while it runs."""

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class Shape(tuple):
    """(C, H, W), as --input-shape gives it (a plain class: typer reads a tuple annotation as three arguments)."""


def shape_option(text: str) -> Shape:
    """--input-shape C,H,W (typer's parser: a bad value is a usage error naming the option, exit 2)."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:  # not an assert: `python -O` would drop it
        raise typer.BadParameter(f"expected C,H,W such as 3,32,32, got {text!r}")
    return Shape(shape)


def forwarded_argv(command: str) -> list[str]:
    """The command line this process was given, from `command` on, less `--nproc N` (what each torchrun child gets:
    it knows it was launched; and torchrun's own parser would read `--nproc` as an ambiguous prefix of its options)."""
    import sys

    args = sys.argv[1:]
    args = args[args.index(command):] if command in args else [command, *args]
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def overrides(sets: list[str] | None, device: str | None = None) -> list[str]:
    out = list(sets or [])
    if device is not None:
        out.append(f"device={device}")
    return out
