"""docs/ARCHITECTURE.md matches the code: the packages it names exist (and none is missing from it), imports flow
one way down its list, every package says what it owns, and no module grows past ~300 lines without saying why."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "compressor"
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def layers() -> list[str]:
    block = re.search(r"```imports\n(.*?)```", DOC.read_text(), re.S)
    assert block, "docs/ARCHITECTURE.md has no ```imports block"
    return block.group(1).split()


def imported_packages(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, first-level compressor package) for every import of the file, those inside functions included;
    relative imports resolved against the file's own package."""
    own = path.relative_to(root).with_suffix("").parts  # ("compressor", "train", "loop")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(own[: len(own) - node.level])
                names = [".".join(base + ([node.module] if node.module else []))]
                if not node.module:  # from . import x, y
                    names = [".".join(base + [a.name]) for a in node.names]
            else:
                names = [node.module or ""]
                if node.module == "compressor":  # from compressor import x: the package x, or the root itself
                    names = [f"compressor.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "compressor":
                found.append((node.lineno, parts[1] if len(parts) > 1 else ""))
    return found


def test_the_documented_packages_are_the_packages():
    documented = layers()
    assert len(documented) == len(set(documented))
    actual = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert sorted(documented) == actual
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "__main__.py"]  # no module outside them
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)/` \| (.*) \|$", DOC.read_text(), re.M)}
    assert sorted(rows) == actual, "every package has a row in the table"
    for name, row in rows.items():  # the row names every module of its package
        modules = {p.stem for p in (PACKAGE / name).glob("*.py")} - {"__init__", "__main__"}
        missing = sorted(m for m in modules if f"`{m}`" not in row)
        assert not missing, f"docs/ARCHITECTURE.md's {name}/ row does not name {missing}"


def test_imports_flow_one_way():
    order = {name: i for i, name in enumerate(layers())}
    upward = []
    for path in sorted(PACKAGE.glob("*/**/*.py")):
        own = path.relative_to(PACKAGE).parts[0]
        for line, target in imported_packages(path):
            # not a package: the root (its __init__ re-exports the API from distill and recipe, and __version__),
            # which only the top of the list may import
            level = order.get(target, len(order) - 1)
            if level > order[own]:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {target or 'compressor'}")
    assert not upward, "imports that point down docs/ARCHITECTURE.md's list:\n" + "\n".join(upward)


def test_the_check_sees_every_kind_of_import(tmp_path):
    # the checker itself: a module of `data` importing other packages absolutely, relatively, inside a function
    fake = tmp_path / "compressor" / "data" / "probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("import compressor.core.errors\nfrom compressor import models\n"
                    "def f():\n    from compressor.train import loop\n    from ..jobs import distill\n"
                    "    from . import batches\n    from .. import report\n")
    assert [t for _, t in imported_packages(fake, tmp_path)] == ["core", "models", "train", "jobs", "data", "report"]


def test_every_package_says_what_it_owns():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 12, f"{init.relative_to(ROOT)}: a docstring saying what it owns"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small_or_say_why(path):
    lines = len(path.read_text().splitlines())
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert lines <= 300 or "300 lines" in doc, f"{lines} lines: split it, or say in its docstring why not"


def declared_imports(package: str) -> set[str] | None:
    """The packages a package's docstring says it may import ("May import core, models and data (why)."), the
    empty set for one that "imports nothing else", None for one that may import everything below it."""
    doc = " ".join((ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text())) or "").split())
    if "Imports nothing else from compressor" in doc:
        return set()
    m = re.search(r"May import ([^.;]*)[.;]", doc)
    assert m, f"{package}/__init__.py: no 'May import ...' line (or 'Imports nothing else from compressor')"
    text = m.group(1)
    if text.startswith(("everything", "every ")):
        listed = re.search(r"\(([^)]*)\)", text)
        return None if listed is None else set(re.findall(r"[a-z]+", listed.group(1))) & set(layers())
    text = re.sub(r"\([^)]*\)", "", text)  # the reasons in parentheses
    return {w for w in re.findall(r"[a-z]+", text) if w != "and"}


@pytest.mark.parametrize("package", layers())
def test_each_package_imports_what_its_docstring_says(package):
    """The docstring's "May import ..." line is the package's real dependencies: none missing, none stale."""
    declared = declared_imports(package)
    actual = {t for path in (PACKAGE / package).rglob("*.py") for _, t in imported_packages(path)} - {package, ""}
    if declared is None:  # "everything (below it)": the one-way order is the rule
        return
    assert actual == declared, (f"{package}/: imports {sorted(actual)}, its docstring says {sorted(declared)}; "
                                "update one of them")


def module_graph(package: str) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (anywhere in it, functions included)."""
    graph = {}
    for path in (PACKAGE / package).rglob("*.py"):
        own = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = own.split(".")[: len(own.split(".")) - node.level] if node.level else []
                mod = ".".join([*base, *(node.module.split(".") if node.module else [])]) if node.level else node.module
                mod = (mod or "").removeprefix("compressor.")
                names = [f"{mod}.{a.name}" for a in node.names] + [mod]
            elif isinstance(node, ast.Import):
                names = [a.name.removeprefix("compressor.") for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == package and len(parts) > 1:
                    found.add(".".join(parts[:2]))
        graph[".".join(own.split(".")[:2])] = found - {".".join(own.split(".")[:2])}
    return graph


@pytest.mark.parametrize("package", layers())
def test_no_import_cycle_inside_a_package(package):
    graph = module_graph(package)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue  # a name imported from the package's __init__, not a module
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*path, node, nxt][path.index(nxt) if nxt in path else 0:])}")
            if state.get(nxt) is None:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node, [])


def test_the_cycle_check_sees_a_cycle(tmp_path, monkeypatch):
    pkg = tmp_path / "compressor" / "data"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""x."""\n')
    (pkg / "a.py").write_text("from compressor.data.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from .a import y\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "compressor")
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycle_inside_a_package("data")
