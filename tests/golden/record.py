"""Records tests/golden/loss_terms.json: the loss terms of fixed-seed CPU distillations (tests/test_golden.py).

Run from the repository root with the project's venv: `.venv/bin/python tests/golden/record.py`. It was run once on
the code *before* the package redesign (issue 16) and its output committed: the test checks that the redesigned
code computes the same numbers. Re-record only for a change that is meant to change the numbers, and say so.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.golden_cases import CASES, SAME_EVERYWHERE, run_case  # noqa: E402


def main() -> None:
    code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    out = {"recorded_with": {"code": code.strip(), "python": platform.python_version(), "env": SAME_EVERYWHERE},
           "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in CASES:
            out["cases"][name] = run_case(name, Path(tmp))
    path = ROOT / "tests" / "golden" / "loss_terms.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
