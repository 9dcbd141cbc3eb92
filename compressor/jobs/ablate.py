"""`compress ablate`: the paper's Table 1 for your own teacher and data, with error bars.

Trains, at an equal budget (the recipe's epochs, batch size and schedule), the student alone, KD, AT, AT+KD,
F-ActT (and gradient-based AT when the recipe enables it), N seeds each. Every run is an ordinary
`jobs.distill.distill` in OUT/<method>/seed<k>/ with the recipe's methods switched by overrides, so each writes its
student.onnx and report.json and is measured by the same onnxruntime verification; the table takes the error
(100 - onnxruntime test accuracy), parameters and batch-1 p50 latency from those reports.

`--init scratch --init teacher` adds the student-init axis: every method runs once per init (a fresh network of the
teacher's family, and the teacher pruned to the target: students.build), in OUT/<init>/<method>/seed<k>/, with that
init's `--init-set INIT:key=value` overrides; `--methods` keeps only the named methods.

Resumable: a run with a report.json is reused, an unfinished one (train_state.pt) is resumed. Every finished run is
checked against the recipe (read once) before anything starts, so other settings in the same OUT are refused
before a file is written. A gate failure inside a run is recorded, not fatal: the baselines are expected to miss
the accuracy gate. ablation.json and ablation.md are rewritten after every run.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass
from pathlib import Path

from compressor.core.errors import GateFailure, UserError, first_line
from compressor.core.fileio import write_json, write_text
from compressor.core.progress import console
from compressor.jobs.distill import distill
from compressor.jobs.paths import FINISHED_MARKER
from compressor.models import checkpoint as ckpt_io
from compressor.recipe.load import apply_overrides, read_yaml, validate_recipe
from compressor.recipe.schema import Recipe
from compressor.report.models import AblationCell, AblationRun, AblationTable, DistillReport
from compressor.data.datasets import input_shape_of
from compressor.teachers.load import file_format


@dataclass(frozen=True)
class Method:
    name: str  # the sub-directory
    label: str  # the table's row
    at: bool = False
    kd: bool = False
    feature: bool = False
    grad_at: bool = False

    def overrides(self) -> list[str]:
        return [f"distill.{key}.enabled={str(getattr(self, key)).lower()}" for key in ("at", "kd", "feature", "grad_at")]


METHODS = [
    Method("student", "student alone"),
    Method("kd", "KD", kd=True),
    Method("at", "AT", at=True),
    Method("at+kd", "AT+KD", at=True, kd=True),
    Method("f-actt", "F-ActT", feature=True),
]
GRAD_AT = Method("grad-at", "gradient AT", grad_at=True)


def methods_for(recipe: Recipe, only: list[str] | None = None) -> list[Method]:
    """The paper's methods (gradient AT when the recipe enables it); `only`: those named, in the table's order."""
    methods = METHODS + ([GRAD_AT] if recipe.distill.grad_at.enabled else [])
    if only:
        known = {m.name for m in METHODS + [GRAD_AT]}
        unknown = [n for n in only if n not in known]
        if unknown:
            raise UserError(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        methods = [m for m in METHODS + [GRAD_AT] if m.name in only]
    return methods


def _comparable(recipe_dump: dict) -> dict:
    """What a finished run's settings mean today: its recipe through the current schema (a key added since takes
    its default), without what may differ between a run and its reuse (device, data location), and with the data's
    image size and channels left to the checkpoint's input shape (compared on their own: a built-in dataset ignored
    them before they meant something)."""
    try:
        r = Recipe.model_validate(recipe_dump).model_dump(mode="json")
    except ValueError:  # a recipe the current schema refuses: compared as written
        r = dict(recipe_dump)
    r = {k: v for k, v in r.items() if k != "device"}
    r["data"] = {k: v for k, v in r.get("data", {}).items() if k not in ("root", "image_size", "channels")}
    return r


def _check_reusable(run_dir: Path, recipe: Recipe) -> None:
    ck = ckpt_io.load_trusted_dict(run_dir / "student.pt")
    old, new = _comparable(ck.get("recipe", {})), _comparable(recipe.model_dump(mode="json"))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shape = input_shape_of(recipe.data)
    if "input_shape" in ck and tuple(ck["input_shape"]) != shape:
        changed.append(f"data.image_size / data.channels: {tuple(ck['input_shape'])} -> {shape}")
    if changed:
        raise UserError(f"{run_dir}: finished with a different recipe ({', '.join(changed)} changed); "
                        "use another --out for the new settings")


def read_report(run_dir: Path) -> DistillReport:
    """A finished run's report.json, typed (a run written by an older compressor that lacks a section the model now
    requires is refused with the file named)."""
    path = run_dir / FINISHED_MARKER
    try:
        return DistillReport.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a report this compressor can read ({first_line(e)}); rerun it with --force "
                        "in another --out") from None


def run_one(teacher: Path, recipe: Recipe, run_dir: Path, *, trust_teacher: bool) -> tuple[AblationRun, DistillReport]:
    """One sub-run: reuse it (the caller has checked it against the recipe), resume it, or start it.
    Returns (the ablation's row, the run's report)."""
    reused = (run_dir / FINISHED_MARKER).exists()
    if not reused:
        try:
            distill(teacher, recipe, run_dir, resume=(run_dir / "train_state.pt").exists(), trust_teacher=trust_teacher)
        except GateFailure:
            pass  # report.json is written before the gates are applied; the row records which failed
    report = read_report(run_dir)
    s, t, lat = report.student, report.teacher, report.latency
    batch = "1" if "1" in lat.student else min(lat.student, key=int)
    row = AblationRun(
        dir=str(run_dir), seed=recipe.seed, reused=reused,
        error=100.0 - (s.onnx_accuracy if s.onnx_accuracy is not None else s.accuracy), params=s.params, arch=s.arch,
        latency_batch=batch, latency_p50_ms=lat.student[batch].p50_ms, teacher_latency_p50_ms=lat.teacher[batch].p50_ms,
        train_seconds=report.distillation.train_seconds, methods=report.distillation.methods,
        failed_gates=[g.name for g in report.gates if not g.passed],
        teacher={"arch": t.arch, "params": t.params,
                 "error": 100.0 - (t.onnx_accuracy if t.onnx_accuracy is not None else t.accuracy)},
    )
    return row, report


def summarise(method: Method, rows: list[AblationRun], init: str | None = None) -> AblationCell:
    errors = [r.error for r in rows]
    return AblationCell(
        method=method.name, label=method.label + (f" ({init})" if init else ""), init=init, runs=rows,
        error_mean=statistics.fmean(errors) if errors else None,
        error_std=statistics.stdev(errors) if len(errors) > 1 else None,  # sample std over seeds
        params=rows[0].params if rows else None,
        latency_p50_ms=statistics.fmean(r.latency_p50_ms for r in rows) if rows else None,
        train_seconds=statistics.fmean(r.train_seconds for r in rows) if rows else None,
    )


def _mean_std(m: AblationCell) -> str:
    if m.error_mean is None:
        return "–"
    return f"{m.error_mean:.2f} ± {m.error_std:.2f}" if m.error_std is not None else f"{m.error_mean:.2f}"


def render_markdown(result: AblationTable) -> str:
    t = result.teacher
    done = [m for m in result.methods if m.runs]
    batch = next((r.latency_batch for m in done for r in m.runs), "1")
    lines = [
        f"# ablation: {result.recipe}",
        "",
        f"Teacher `{t.get('arch', '?')}` ({t.get('params', 0) / 1e6:.2f}M params): **{t.get('error', float('nan')):.2f}%** "
        f"test error. Every student trained {result.epochs} epochs on {result.train_images} images, "
        f"seeds {', '.join(map(str, result.seeds))}; error = 100 − onnxruntime top-1 on {result.test_images} "
        "test images, mean ± sample std over seeds.",
        "",
        "| method | error % | params | student p50 ms (batch " + batch + ") | train s / run | seeds | gates failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in done:
        failed: dict[str, int] = {}
        for r in m.runs:
            for g in r.failed_gates:
                failed[g] = failed.get(g, 0) + 1
        lines.append(
            f"| {m.label} | {_mean_std(m)} | {m.params / 1e6:.3f}M | {m.latency_p50_ms:.3f} | "
            f"{m.train_seconds:.0f} | {len(m.runs)} | "
            + (", ".join(f"{g} ({n}/{len(m.runs)})" for g, n in failed.items()) or "none") + " |"
        )
    inits = list(dict.fromkeys(m.init for m in done))
    names = list(dict.fromkeys(m.method for m in done))
    labels = {m.method: m.label.removesuffix(f" ({m.init})" if m.init else "") for m in done}
    cell = {(m.init, m.method): _mean_std(m) for m in done}
    lines += ["", "As the paper's Table 1 (error %):", "",
              "| " + ("student init | " if inits != [None] else "") + " | ".join(labels[n] for n in names) + " | teacher |",
              "|" + "---|" * (len(names) + 1 + (inits != [None]))]
    for init in inits:
        lines.append("| " + (f"{init} | " if init else "") + " | ".join(cell.get((init, n), "–") for n in names)
                     + f" | {t.get('error', float('nan')):.2f} |")
    lines.append("")
    return "\n".join(lines)


INITS = ("scratch", "teacher")


def parse_init_sets(inits: list[str], init_sets: list[str]) -> dict[str, list[str]]:
    """`--init-set scratch:train.lr=0.1` -> {"scratch": ["train.lr=0.1"]}: overrides for one init only."""
    out: dict[str, list[str]] = {i: [] for i in inits}
    for text in init_sets:
        init, sep, override = text.partition(":")
        if not sep or init not in INITS or "=" not in override:
            raise UserError(f"--init-set {text}: expected INIT:key=value with INIT one of {', '.join(INITS)}")
        if init not in out:
            raise UserError(f"--init-set {text}: {init} is not one of the --init values ({', '.join(inits)})")
        out[init].append(override)
    return out


def run_ablation(
    teacher: Path, recipe_path: Path, sets: list[str], seeds: int, out: Path, *, trust_teacher: bool = False,
    inits: list[str] | None = None, init_sets: list[str] = (), only: list[str] | None = None,
) -> AblationTable:
    """Run (or reuse) every [init x] method x seed; write OUT/ablation.json and OUT/ablation.md; return the result.

    inits: the student-init axis (`scratch`, `teacher`): each method runs once per init, in OUT/<init>/<method>/,
    with `student.init=<init>` and that init's `--init-set` overrides (a grown student is fine-tuned at a lower
    learning rate than a scratch one is trained at); None: the recipe's own init, in OUT/<method>/."""
    if seeds < 1:
        raise UserError(f"--seeds: must be at least 1 (got {seeds})")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a directory")
    file_format(teacher)  # a missing or unreadable teacher fails here, before any run directory is made
    raw = read_yaml(recipe_path)  # read once: every run gets the same recipe even if the file is edited meanwhile

    def variant(extra: list[str]) -> Recipe:
        node = copy.deepcopy(raw) if raw is not None else {}
        return validate_recipe(apply_overrides(node, [*sets, *extra]) if isinstance(node, dict) else node, str(recipe_path))

    for init in inits or []:
        if init not in INITS:
            raise UserError(f"--init: {init!r} is not one of {', '.join(INITS)}")
    per_init = parse_init_sets(list(inits or []), list(init_sets))
    base = variant([])
    axis = [(i, [f"student.init={i}", *per_init[i]], out / i) for i in inits] if inits else [(None, [], out)]
    cells = [(init, extra, folder, m) for init, extra, folder in axis for m in methods_for(variant(extra), only)]
    seed_list = [base.seed + i for i in range(seeds)]
    result = AblationTable(
        recipe=base.name, recipe_path=str(recipe_path), overrides=sets, teacher_path=str(teacher),
        epochs=base.train.epochs, seeds=seed_list, train_images=None, test_images=None, teacher={},
        inits={i: per_init[i] for i in inits} if inits else None,
        methods=[summarise(m, [], init) for init, _, _, m in cells],
    )
    plan = [[(variant([*extra, *m.overrides(), f"seed={seed}"]), folder / m.name / f"seed{seed}") for seed in seed_list]
            for _, extra, folder, m in cells]
    for recipe, run_dir in (run for runs in plan for run in runs):  # refuse before anything is (over)written
        if (run_dir / FINISHED_MARKER).exists():
            _check_reusable(run_dir, recipe)
    total = len(cells) * seeds
    for i, ((init, _, _, method), runs) in enumerate(zip(cells, plan)):
        rows = []
        for j, (recipe, run_dir) in enumerate(runs):
            what = method.label + (f", init {init}" if init else "")
            console.print(f"[bold]ablation {i * seeds + j + 1}/{total}: {what}, seed {recipe.seed}[/]")
            row, report = run_one(teacher, recipe, run_dir, trust_teacher=trust_teacher)
            rows.append(row)
            result.teacher, result.train_images, result.test_images = row.teacher, report.data.train, report.data.test
            result.methods[i] = summarise(method, rows, init)
            write_json(out / "ablation.json", result.model_dump(mode="json"))
            write_text(out / "ablation.md", render_markdown(result))
    console.print(render_markdown(result), markup=False, highlight=False)
    console.print(f"wrote {out}/ablation.md and {out}/ablation.json")
    return result
