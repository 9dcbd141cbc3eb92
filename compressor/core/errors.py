"""The two kinds of failure a user sees, and the exit codes the contract gives them.

`UserError` is bad input (recipe, teacher file, data, flags): exit 2, one line per problem, no traceback.
`GateFailure` is a finished run whose verification gates failed: exit 1, all artifacts already written.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CompressorError(Exception):
    """Base class: every error the CLI turns into a clean message and an exit code."""

    exit_code = EXIT_USAGE

    def __init__(self, *problems: str):
        self.problems = [p for p in problems if p] or ["unknown error"]
        super().__init__("\n".join(self.problems))


class UserError(CompressorError):
    """Bad input: exit 2. Each problem is one line (`path.to.key: message` where it applies)."""

    exit_code = EXIT_USAGE


class GateFailure(CompressorError):
    """The run finished but one or more verification gates failed: exit 1."""

    exit_code = EXIT_GATE


class Interrupted(CompressorError):
    """Ctrl-C or SIGTERM, with what was kept and how to go on: exit 130."""

    exit_code = EXIT_INTERRUPTED


class Cancelled(Interrupted):
    """The caller of a job (the job service) asked it to stop: the same exit as SIGTERM, the state saved."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (library errors are often pages long), else its type's name."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
