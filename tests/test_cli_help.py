"""The command line as the README documents it: every option the README gives a command is one that command has
(and the README's options table lists all of them), flags show as plain `--flag` in --help, `--version` works."""

import re

import pytest
import typer

from compressor import __version__
from compressor.cli import app

from .conftest import ROOT, run_cli

README = (ROOT / "README.md").read_text()
COMMANDS = ["train", "distill", "export", "verify", "inspect", "ablate", "recipe validate", "serve", "submit"]
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z-]*|-[a-z])(?![\w-])")


def options_of(command: str) -> set[str]:
    """The option names (long and short) the command really has, --help included."""
    click_command = typer.main.get_command(app)
    for part in command.split():
        click_command = click_command.commands[part]
    return {name for p in click_command.params if isinstance(p, typer.core.TyperOption) for name in p.opts} | {"--help"}


def readme_table() -> dict[str, set[str]]:
    """The README's options table: `compress CMD ...` -> the options in its row."""
    rows = re.findall(r"^\| `compress ([a-z]+(?: validate)?)\b[^`]*` \| (.+) \|$", README, re.MULTILINE)
    return {cmd: set(OPTION.findall(cell)) for cmd, cell in rows}


def readme_command_lines() -> list[tuple[str, set[str]]]:
    """Every command line in the README's bash blocks that runs `compress CMD`, with its continuation lines."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.DOTALL):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            m = re.match(r"compress ((?:recipe )?[a-z]+)\b(.*)", line.strip())
            if m and m.group(1) in COMMANDS:
                out.append((m.group(1), set(OPTION.findall(m.group(2).split("#")[0]))))
    return out


def test_the_readme_table_lists_exactly_each_commands_options():
    table = readme_table()
    assert sorted(table) == sorted(COMMANDS)
    for command, documented in table.items():
        assert documented == options_of(command) - {"--help"}, command


def test_every_option_in_a_readme_command_line_exists():
    lines = readme_command_lines()
    assert {cmd for cmd, _ in lines} >= {"train", "distill", "export", "verify", "inspect", "ablate"}
    for command, used in lines:
        assert used <= options_of(command), (command, used - options_of(command))


def test_set_and_device_belong_to_the_commands_that_read_a_recipe():
    for command in ("train", "distill", "verify", "ablate"):
        assert {"--set", "--device", "--recipe"} <= options_of(command), command
    for command in ("export", "inspect"):
        assert not {"--set", "--device", "--recipe"} & options_of(command), command


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_option_and_flags_without_a_type(command, cli):
    r = cli(*command.split(), "--help")
    assert r.exit_code == 0, r.output
    for name in options_of(command):
        assert re.search(rf"(?<![\w-]){name}(?![\w-])", r.output), (command, name)
    assert "<bool>" not in r.output  # --resume, --force, --help: plain flags
    assert re.search(r"<(path|str|int|float|list\[str\])>", r.output)  # options that take a value keep their type


def test_top_level_help_and_version(cli):
    r = cli("--help")
    assert r.exit_code == 0 and "--version" in r.output and "<bool>" not in r.output
    r = run_cli("--version")  # the console script a user runs
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"compress {__version__}" and not r.stderr


def test_the_commands_a_ci_runner_calls_do_not_import_torch():
    """`compress submit`, `compress jobs`, `compress serve token` and the server's reading of reports need no torch:
    importing it (and the exporter, onnxruntime, matplotlib) would cost every call seconds (issue 22)."""
    import subprocess
    import sys

    heavy = ("torch", "torchvision", "onnx", "onnxruntime", "matplotlib")
    code = ("import sys; import compressor, compressor.cli, compressor.cli.submit, compressor.cli.jobs, "
            "compressor.service.app, compressor.service.dispatch, compressor.report.models; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
    # and the package's API is still there, imported on first use
    r = subprocess.run([sys.executable, "-c", "import compressor; print(compressor.at_loss.__module__, "
                        "compressor.load_recipe.__name__)"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.stdout.split() == ["compressor.distill.at", "load_recipe"], r.stdout + r.stderr


def test_the_console_script_raises_the_collectors_thresholds_and_the_library_does_not():
    """`compress` owns its process: fewer passes of the cyclic collector over torch's ~500k live objects (a tiny
    distill spent ~1 s of ~8 s in it). Importing the library leaves the caller's process as it was."""
    import subprocess
    import sys

    from compressor.core.memory import GC_THRESHOLDS

    code = ("import gc, sys; before = gc.get_threshold(); import compressor.cli, compressor.jobs.distill; "
            "assert gc.get_threshold() == before, gc.get_threshold(); sys.argv = ['compress', '--version']\n"
            "try:\n    compressor.cli.main()\nexcept SystemExit:\n    pass\n"
            "print(*gc.get_threshold(), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert tuple(map(int, r.stderr.split())) == GC_THRESHOLDS
