"""Property: whatever a recipe file or a --set holds, the answer is a valid Recipe or a clean UserError.

Random mutations of the shipped recipe (keys deleted, values of the wrong type, unknown keys, sections
replaced or nested, raw text edited) go through `load_recipe` and through `compress recipe validate`.
A clean error is: exit 2, one line per problem, every line naming where the problem is, no traceback.
"""

import copy
import os
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor.core.errors import UserError
from compressor.recipe.load import load_recipe, validate_recipe
from compressor.recipe.schema import Recipe

from .conftest import RECIPE

BASE = yaml.safe_load(RECIPE.read_text())
# a few seconds by default; FUZZ_EXAMPLES=5000 for a deeper search
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 60)), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# YAML that means something surprising: dates (one impossible), infinities, tags, anchors, octal, merge keys
TRICKY = ["2001-02-30", "2001-02-03", ".inf", "-.inf", ".nan", "0o17", "0x1F", "1_000", "!!python/object:os.system",
          "!!binary aGk=", "&a [*a]", "*undefined", "<<: {a: 1}", "{a: 1, a: 2}", "? [a]", "!!set {a}", "1e400"]
scalars = (st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=12)
           | st.sampled_from(["auto", "cpu", "200k", "0.25", "wrn-16-1", "1e-3", "null", "[1, 2]", "", "~"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8) | st.integers(0, 9), inner, max_size=3), max_leaves=6)
# keys that exist somewhere in a recipe, so mutations often land on a real key
KNOWN_KEYS = sorted({"data", "teacher", "student", "train", "distill", "verify", "export", "name", "seed", "device",
                     "arch", "size", "epochs", "lr", "batch_size", "at", "kd", "beta", "p", "pairs", "alpha",
                     "temperature", "batch_sizes", "root", "limit_train", "milestones", "max_latency_ms"})
keys = st.sampled_from(KNOWN_KEYS) | st.text(min_size=1, max_size=10)


@st.composite
def mutated(draw) -> dict:
    """The shipped recipe after 1-4 random edits at random depths."""
    raw = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        node = raw
        while isinstance(node, dict) and node and draw(st.booleans()):  # walk down a random number of levels
            child = node[draw(st.sampled_from(sorted(node, key=str)))]
            if not isinstance(child, dict):
                break
            node = child
        if not isinstance(node, dict):
            continue
        op = draw(st.sampled_from(["delete", "replace", "add", "nest"]))
        key = draw(st.sampled_from(sorted(node, key=str))) if node and op != "add" else draw(keys)
        if op == "delete":
            node.pop(key, None)
        elif op == "replace":
            node[key] = draw(values)
        elif op == "add":
            node[draw(keys)] = draw(values)
        else:  # a value pushed one level down, or a section turned into a list
            node[key] = draw(st.sampled_from([{draw(keys): node.get(key)}, [node.get(key)]]))
    return raw


def assert_clean(problems: list[str]) -> None:
    assert problems, "an error with no message"
    for line in problems:
        assert isinstance(line, str) and line.strip() and "\n" not in line, repr(line)
        assert "Traceback" not in line and "object at 0x" not in line, line


def outcome(load) -> Recipe | UserError:
    try:
        recipe = load()
    except UserError as e:
        assert_clean(e.problems)
        return e
    assert isinstance(recipe, Recipe)
    # a valid recipe survives the trip through JSON (what checkpoints and reports store)
    assert validate_recipe(recipe.model_dump(mode="json")) == recipe
    return recipe


@FUZZ
@given(mutated())
def test_mutated_mappings_validate_or_fail_cleanly(raw):
    outcome(lambda: validate_recipe(raw))


@FUZZ
@given(mutated())
def test_mutated_yaml_files_load_or_fail_cleanly(raw):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "recipe.yaml"
        path.write_text(yaml.safe_dump(raw, allow_unicode=True))
        outcome(lambda: load_recipe(path))


@FUZZ
@given(st.data())
def test_edited_yaml_text_loads_or_fails_cleanly(data):
    """Raw text edits: broken indentation, stray brackets, tabs, dates, anchors, half-deleted lines."""
    text = RECIPE.read_text()
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        if data.draw(st.booleans()):
            junk = data.draw(st.text(alphabet=":-[]{}#&*!|>'\"%@`,? \n\t0123456789eE.+abxyz", max_size=12)
                             | st.sampled_from(TRICKY).map(lambda t: f" {t}"))
            text = text[:at] + junk + text[at:]
        else:
            text = text[:at] + text[at + data.draw(st.integers(1, 40)):]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "recipe.yaml"
        path.write_text(text)
        outcome(lambda: load_recipe(path))


@FUZZ
@given(st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.lists(keys, min_size=1, max_size=3).map(".".join),
              st.text(max_size=15) | st.sampled_from(TRICKY)
              | values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip())),
    st.text(max_size=20),
), min_size=1, max_size=3))
def test_random_set_overrides_apply_or_fail_cleanly(overrides):
    outcome(lambda: load_recipe(RECIPE, overrides))


@settings(max_examples=15, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mutated())
def test_recipe_validate_cli_exits_0_or_2_without_traceback(cli, raw):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "recipe.yaml"
        path.write_text(yaml.safe_dump(raw, allow_unicode=True))
        expected = outcome(lambda: load_recipe(path))
        r = cli("recipe", "validate", path)
    assert "Traceback" not in r.output
    if isinstance(expected, Recipe):
        assert r.exit_code == 0, r.output
    else:
        assert r.exit_code == 2, r.output
        errors = [ln for ln in r.output.splitlines() if ln.startswith("error: ")]
        assert len(errors) == len(expected.problems)
        assert all(str(path) in ln for ln in errors)
