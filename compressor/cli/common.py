"""What every command shares: the --set/--device options, and turning errors into messages + exit codes."""

from __future__ import annotations

import functools
import os
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import EXIT_INTERRUPTED, CompressorError
from ..progress import console

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a recipe key: dotted.key=value (repeatable), validated like the file."),
]
DeviceOption = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda (default: the recipe's, auto)")]
RecipeOption = Annotated[Path, typer.Option("--recipe", "-r", help="Recipe YAML file.")]


def handle_errors(fn):
    """Run a command; a CompressorError becomes one line per problem and its exit code, never a traceback
    (unless COMPRESSOR_DEBUG=1). Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CompressorError as e:
            if os.environ.get("COMPRESSOR_DEBUG") == "1":
                traceback.print_exc()
            label = "error" if e.exit_code != 1 else "failed"
            for problem in e.problems:
                console.print(f"[bold red]{label}:[/] {problem}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            console.print("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def check_device(device: str | None) -> None:
    from ..errors import UserError

    if device is not None and device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device: must be auto, cpu or cuda (got {device!r})")


def overrides(sets: list[str] | None, device: str | None = None) -> list[str]:
    check_device(device)
    out = list(sets or [])
    if device is not None:
        out.append(f"device={device}")
    return out
