"""What a client may hand the server, checked before anything is stored or run.

- A teacher must load with `torch.load(weights_only=True)`: a compressor checkpoint or a state_dict. The service
  never unpickles (there is no --trust-teacher here), and it refuses TorchScript archives and torch.export
  programs too: both carry code the server would load, and both are easy to turn into a state_dict first.
- A recipe is the YAML a `compress distill` would read, with the client's `--set` overrides, validated by the
  same `validate_recipe` (the same one-line-per-problem messages), after two server rules: `data.root` is not
  accepted (no client names a path on the server), and `data.name` is one of the server's datasets, which the
  server maps to its own kind and path. Output paths, --resume/--force and --trust-teacher are not recipe keys:
  the API's request model has no field for them and refuses them by name.
- `device: cuda` needs a GPU somewhere in the Ray cluster: refused at submit on the embedded Ray when this machine
  has none; on a cluster (--ray-address) the job waits, queued, for a GPU node to join. `auto` is cuda when the
  cluster has a GPU, else cpu — decided here, so the job asks Ray for what it will use.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from compressor.core.errors import UserError, first_line
from compressor.recipe.load import apply_overrides, validate_recipe
from compressor.recipe.schema import Recipe
from compressor.service.config import Dataset

MAX_RECIPE_BYTES = 256 * 1024
# request fields a local `compress distill` has and a client may not send, with why
SERVER_ONLY = {
    "trust_teacher": "not accepted from a client: the service never unpickles a teacher (upload a state_dict or a "
                     "compressor checkpoint)",
    "out": "not accepted from a client: a job writes into its own directory; download its artifacts instead",
    "resume": "not accepted from a client: the server resumes a job itself after a worker dies",
    "force": "not accepted from a client: every job has a fresh directory",
    "device": "set the recipe's device (or --set device=...), not a request field",
}


@dataclass(frozen=True)
class Accepted:
    recipe: Recipe  # validated, with the server's dataset kind and path
    dataset: str  # the name the client used
    device: str  # cpu | cuda
    num_gpus: int


def check_teacher(path: Path, shown: str) -> str:
    """The format of an uploaded teacher ("compressor checkpoint" | "state_dict"), or a UserError naming `shown`
    (the client's file name, never the server's path)."""
    from compressor.models import checkpoint as ckpt_io
    from compressor.teachers.formats import unwrap_state_dict
    from compressor.teachers.load import file_format

    def own(problem: str) -> str:
        return problem.replace(str(path), shown)

    try:
        kind = file_format(path)
    except UserError as e:
        raise UserError(*map(own, e.problems)) from None
    if kind in ("torchscript", "export"):
        what = "a TorchScript archive" if kind == "torchscript" else "a torch.export program (.pt2)"
        raise UserError(f"{shown}: {what} is not accepted by the service (loading it runs code from the file); "
                        "upload its state_dict (torch.save(model.state_dict(), ...)) with teacher.arch, or a "
                        "compressor checkpoint")
    try:
        obj = _weights_only(path)
    except UserError as e:
        problems = [own(p).replace(", or pass --trust-teacher if you trust this file", "; the service never "
                                   "unpickles a teacher") for p in e.problems]
        raise UserError(*problems) from None
    if ckpt_io.is_compressor_checkpoint(obj):
        return "compressor checkpoint"
    if unwrap_state_dict(obj) is not None:
        return "state_dict"
    raise UserError(f"{shown}: neither a compressor checkpoint nor a state_dict (a mapping of parameter names to "
                    "tensors)")


def _weights_only(path: Path):
    """The upload loaded weights-only and memory-mapped: its tensors stay on disk (a 500 MB teacher does not come
    into the server's memory to be checked). Anything that fails is loaded again the library's way, for its
    one-line message (and for the old, unmappable format)."""
    import torch

    from compressor.models import checkpoint as ckpt_io

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return ckpt_io.load_trusted_dict(path)


def parse_yaml(text: str) -> dict:
    if len(text.encode("utf-8")) > MAX_RECIPE_BYTES:
        raise UserError(f"recipe: larger than {MAX_RECIPE_BYTES // 1024} KiB")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise UserError(f"recipe{where}: invalid YAML: {getattr(e, 'problem', None) or first_line(e)}") from None
    except (ValueError, RecursionError) as e:
        raise UserError(f"recipe: invalid YAML ({first_line(e)})") from None
    if raw is None:
        raise UserError("recipe: empty (a recipe is a mapping of sections: data, teacher, student, ...)")
    if not isinstance(raw, dict):
        raise UserError(f"recipe: a recipe is a mapping of sections (data, teacher, student, ...), got "
                        f"{type(raw).__name__}")
    return raw


def check_recipe(text: str, overrides: list[str], datasets: dict[str, Dataset], gpus_in_cluster: float,
                 gpu_may_join: bool = False) -> Accepted:
    """The recipe a job will run, or one UserError listing every problem (HTTP 422). `gpu_may_join`: the cluster
    is one nodes join (--ray-address), so a cuda job without a GPU node now waits for one instead of being
    refused."""
    raw = apply_overrides(parse_yaml(text), overrides)
    data = raw.get("data")
    if data is None:
        data = raw["data"] = {}
    if not isinstance(data, dict):
        raise UserError("data: a section (a mapping), got " + type(data).__name__)
    problems = []
    if data.get("root") is not None:
        problems.append(f"data.root: not accepted from a client (a client never names a path on the server); set "
                        f"data.name to one of this server's datasets: {', '.join(sorted(datasets))}")
    name = data.get("name", "fashion_mnist")
    dataset = datasets.get(name) if isinstance(name, str) else None
    if dataset is None:
        problems.append(f"data.name: unknown dataset {name!r}; this server has: {', '.join(sorted(datasets))}")
    if problems:
        raise UserError(*problems)
    data["name"], data["root"] = dataset.kind, dataset.root
    recipe = validate_recipe(raw, "recipe")
    if recipe.device == "cuda" and gpus_in_cluster < 1 and not gpu_may_join:
        raise UserError("device: cuda needs a GPU worker, and no node of this server's Ray cluster has a GPU; "
                        "use device: cpu (or auto), or ask the operator for a GPU node")
    device = "cuda" if recipe.device == "cuda" or (recipe.device == "auto" and gpus_in_cluster >= 1) else "cpu"
    return Accepted(recipe, dataset.name, device, 1 if device == "cuda" else 0)


def request_hash(teacher_sha256: str, recipe_yaml: str, overrides: list[str], resources=None,
                 timeout_minutes: float | None = None) -> str:
    """What makes two submissions the same request (for an idempotency key used twice). Resources and a timeout
    count only when given, so a request without them hashes as it did before they existed."""
    parts = [teacher_sha256, recipe_yaml, list(overrides)]
    extra = resources.model_dump(exclude_none=True) if resources is not None else {}
    if extra or timeout_minutes is not None:
        parts += [extra, timeout_minutes]
    canonical = json.dumps(parts, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
