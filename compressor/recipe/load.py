"""Reading a recipe: `load_recipe(path, overrides)` reads the YAML, applies `--set dotted.key=value` overrides
(values parsed as YAML, so `1000`, `[1, 64]` and `null` mean what they look like), validates against the schema
(recipe.schema), and raises one `UserError` that lists every problem as `path.to.key: message`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from compressor.core.errors import UserError, first_line
from compressor.recipe.schema import Recipe


def _parse_override(text: str) -> tuple[list[str], Any]:
    shown = text if text.isprintable() else repr(text)  # a newline must not break the one-line message
    if "=" not in text:
        raise UserError(f"--set {shown}: expected dotted.key=value")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {shown}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError, RecursionError):  # not YAML (or an impossible date): the text itself
        value = raw
    return key.split("."), value


def apply_overrides(raw: dict, overrides: Iterable[str]) -> dict:
    for text in overrides:
        path, value = _parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                shown = text if text.isprintable() else repr(text)
                raise UserError(f"--set {shown}: {'.'.join(path[: i + 1])} is not a section")
            node = nxt
        node[path[-1]] = value
    return raw


def _fields_at(loc: tuple) -> list[str]:
    """Valid keys of the section that `loc` (a pydantic error location) points into."""
    model: Any = Recipe
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _key(part) -> str:
    """A key as the error line shows it: plain keys as written, odd ones (spaces, newlines, empty) quoted."""
    if isinstance(part, str) and not re.fullmatch(r"[\w-]+", part):
        return repr(part)
    return str(part)


def _user_loc(err: dict) -> tuple:
    """The keys and indices of a pydantic error location, without the validator and union-member steps
    ("function-after[...]", "list[PairSpec]", "float") pydantic inserts; an unknown key is kept whatever it looks like."""
    unknown = err["loc"][-1:] if err["type"] == "extra_forbidden" else ()
    steps = err["loc"][: len(err["loc"]) - len(unknown)]
    return (*(p for p in steps if not (isinstance(p, str) and ("[" in p or p in _UNION_MEMBERS))), *unknown)


_UNION_MEMBERS = ("float", "str", "int", "bool")


def format_errors(exc: ValidationError) -> list[str]:
    """One line per problem, `path.to.key: message`, with the closest valid key for an unknown one."""
    lines = []
    for err in exc.errors():
        loc = _user_loc(err)
        path = ".".join(_key(p) for p in loc) or "recipe"
        msg = " ".join(err["msg"].split("\n"))
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _fields_at(loc), n=1)
            msg = "unknown key" + (f"; did you mean {'.'.join([*map(_key, loc[:-1]), close[0]])}?" if close else "")
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        line = f"{path}: {msg}"
        if line not in lines:
            lines.append(line)
    return lines


def validate_recipe(raw: Any, source: str = "recipe") -> Recipe:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: a recipe is a mapping of sections (data, teacher, student, ...), got {type(raw).__name__}")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise UserError(*format_errors(e)) from None


def read_yaml(path: str | Path) -> Any:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{p}: recipe not found") from None
    except IsADirectoryError:
        raise UserError(f"{p}: is a directory, not a recipe file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read recipe ({e})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or first_line(e)
        raise UserError(f"{p}{where}: invalid YAML: {problem}") from None
    except ValueError as e:  # a value YAML recognises but cannot build, such as the date 2001-02-30
        raise UserError(f"{p}: invalid YAML value ({e}); quote it to mean a string") from None
    except RecursionError:
        raise UserError(f"{p}: invalid YAML: nested too deeply") from None
    if raw is None:  # no bytes, only blanks and comments, or a bare `null`: most likely the wrong or a truncated file
        raise UserError(f"{p}: empty recipe file (a recipe is a mapping of sections: data, teacher, student, ...)")
    return raw


def load_recipe(path: str | Path | None, overrides: Iterable[str] = ()) -> Recipe:
    """Read, override and validate a recipe; raise one UserError listing every problem."""
    raw = read_yaml(path) if path is not None else {}
    if isinstance(raw, dict):
        raw = apply_overrides(raw, overrides)
    recipe = validate_recipe(raw, str(path or "recipe"))
    recipe._source = str(path) if path is not None else None
    return recipe


def recipe_schema() -> dict:
    return Recipe.model_json_schema()
