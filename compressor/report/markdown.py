"""The human side of report.json: `report.md` for a pull request, and the same summary in the terminal."""

from __future__ import annotations

from rich.table import Table

from compressor.core.progress import console
from compressor.report.models import DistillReport, LatencySearch, VerifyReport


def _n(x: float | int | None) -> str:
    if x is None:
        return "–"
    x = float(x)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def _x(x) -> str:
    return "–" if x is None else f"{x:.2f}x"


def _pct(x) -> str:
    return "–" if x is None else f"{x:.2f}%"


def _val(x) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def summary_rows(report: DistillReport) -> dict[str, list[list[str]]]:
    t, s = report.teacher, report.student
    models = [
        ["", "teacher", "student"],
        ["arch", t.arch, s.arch],
        ["params", _n(t.params), _n(s.params)],
        ["FLOPs / image", _n(t.flops), _n(s.flops)],
        ["accuracy (PyTorch)", _pct(t.accuracy), _pct(s.accuracy)],
        ["accuracy (onnxruntime)", _pct(t.onnx_accuracy), _pct(s.onnx_accuracy)],
    ]
    grown = _sizing(s).get("accuracy_after_pruning")
    if grown is not None:  # the student grown from the teacher: where distillation started from
        models.insert(4, ["accuracy right after pruning (PyTorch)", "", _pct(grown)])
    lat = report.latency
    latency = [["batch", "teacher p50 ms", "student p50 ms", "student p90 ms", "student p99 ms", "student img/s", "speedup",
                "speedup range over rounds"]]
    for b, row in lat.student.items():
        tr = lat.teacher.get(b)
        lo, hi = lat.speedup_interval.get(b, [None, None])
        latency.append([b, f"{tr.p50_ms if tr else float('nan'):.3f}", f"{row.p50_ms:.3f}", f"{row.p90_ms:.3f}",
                        f"{row.p99_ms:.3f}", f"{row.throughput:.0f}", _x(lat.speedup.get(b)),
                        "–" if lo is None else f"{lo:.2f}–{hi:.2f}x"])
    gates = [["gate", "limit", "value", "result"]]
    gates += [[g.name, _val(g.limit), _val(g.value), "pass" if g.passed else "FAIL"] for g in report.gates]
    return {"models": models, "latency": latency, "gates": gates}


def _sizing(student) -> dict:
    return student.sizing.model_dump() if student.sizing is not None else {}


def search_rows(search: LatencySearch) -> list[list[str]]:
    """The latency search's trade: every candidate as measured, the chosen one marked."""
    rows = [["", "candidate", "blocks removed", "channels removed", "params", "FLOPs", "p50 ms", "of teacher",
             "speed-up", "timed again", "accuracy after pruning", "parity", "meets the target"]]
    for c in search.candidates:
        timed = c.latency_ratio is not None
        rows.append(["**chosen**" if c.chosen else "", c.name, str(len(c.removed_blocks)), f"{c.width_ratio:.0%}",
                     _n(c.params), _n(c.flops), f"{c.p50_ms:.3f}" if timed else "–",
                     f"{c.latency_ratio:.3f}" if timed else "–", _x(1 / c.latency_ratio) if timed else "–",
                     "–" if c.latency_ratio_again is None else f"{c.latency_ratio_again:.3f}",
                     _pct(c.accuracy), "–" if c.parity_ok is None else ("ok" if c.parity_ok else "FAIL"),
                     "yes" if c.meets else f"no: {c.why_not}"])
    return rows


def _search_section(report: DistillReport) -> list[str]:
    search = report.student.sizing.search if report.student.sizing is not None else None
    if search is None:
        return []
    target = " and ".join(t for t in (search.target is not None and f"{search.target:g} of the teacher's p50 "
                                      f"({1 / search.target:.2f}x faster)",
                                      search.target_ms is not None and f"{search.target_ms:g} ms") if t)
    final = report.latency.speedup.get(str(search.batch))
    return [
        f"## Latency search (target {target} at batch {search.batch})", "",
        f"Searched {search.searched}; {search.seconds:.1f} s. Each candidate exported to ONNX and timed in "
        f"onnxruntime ({search.provider}, {search.threads} threads) against the teacher in alternating rounds; "
        f"accuracy right after pruning and BatchNorm recalibration ({search.calibration_images} images) on "
        f"{search.accuracy_on}. Chosen: the most accurate candidate that meets every target and passes parity."
        + (f" After distillation, verification measured {final:.2f}x at batch {search.batch}." if final else ""),
        "", _md_table(search_rows(search)), "",
    ]


def _student_line(student) -> list[str]:
    """How the student came about: grown from the teacher (pruned) or sized / named from scratch."""
    sizing = _sizing(student)
    if sizing.get("how") == "pruned":
        return [f"- student grown from the teacher: {sizing['reason']}; test accuracy right after pruning and "
                f"BatchNorm recalibration {sizing['accuracy_after_pruning']:.2f}%, after distillation "
                f"{student.accuracy:.2f}%"]
    if sizing.get("reason"):
        return [f"- student ({sizing.get('init', 'scratch')}): {sizing['reason']}"
                + (f"; not grown from the teacher because {sizing['why_scratch']}" if sizing.get("why_scratch") else "")]
    return []


def _parallel(p) -> str:
    """`` (one process) or how the global batch was split, e.g. ` (global; 4 processes × 32, nccl)`."""
    if p is None or p.world_size == 1:
        return ""
    return f" (global; {p.world_size} processes × {p.per_rank_batch}, {p.backend}{', SyncBatchNorm' if p.sync_bn else ''})"


def _md_table(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def render_markdown(report: DistillReport) -> str:
    rows = summary_rows(report)
    d = report.distillation
    lat = report.latency
    verdict = "**all gates passed**" if report.passed else "**a gate FAILED**"
    pairs = ", ".join(f"`{p.teacher}` → `{p.student}` {p.shape}" for p in d.pairs) or "none"
    parts = [
        f"# compressor report: {report.recipe}",
        "",
        f"{verdict}. Student `{report.student.arch}` distilled from `{report.teacher.arch}` on "
        f"{report.data.name} ({report.data.train} training images, {d.epochs} epochs, best epoch "
        f"{d.best_epoch}), methods: {', '.join(d.methods) or 'student alone'}.",
        "",
        "## Models (test split)",
        "",
        _md_table(rows["models"]),
        "",
        f"## Latency (onnxruntime, {lat.provider}, {lat.threads} threads, graph optimisation {lat.graph_optimization})",
        "",
        _md_table(rows["latency"]),
        "",
        "## Gates",
        "",
        _md_table(rows["gates"]),
        "",
        *_search_section(report),
        "## Distillation",
        "",
        *_student_line(report.student),
        f"- attention pairs: {pairs}",
        f"- training: {d.train_seconds:.1f} s, {d.images_per_second:.0f} images/s, batch {d.batch_size}, lr {d.lr}"
        + _parallel(report.distributed) + f", precision {d.amp.dtype} ({d.amp.reason})",
        f"- export: `{report.export.path}`, opset {report.export.opset}, max |PyTorch − ONNX| = "
        f"{report.export.max_abs_diff:.2e}",
    ]
    if report.int8 is not None:
        q = report.int8
        parts += ["", "## int8", "", f"- accuracy {q.accuracy:.2f}% (fp32 {report.student.onnx_accuracy:.2f}%)",
                  f"- p50 ms int8 / fp32 (both {q.provider}, alternating rounds): " + ", ".join(
                      f"batch {b}: {q.latency[b].p50_ms:.3f} / {q.fp32_latency[b].p50_ms:.3f}" for b in q.latency),
                  f"- {q.decision}"]
    env = report.environment
    parts += ["", f"_{env.cpu}; torch {env.torch}, onnxruntime {env.onnxruntime}._", ""]
    for title, path in report.figures.items():
        parts += [f"![{title}]({path})", ""]
    return "\n".join(parts)


def print_summary(report: DistillReport) -> None:
    for title, rows in summary_rows(report).items():
        if len(rows) < 2:
            continue
        table = Table(title=title, title_justify="left")
        for h in rows[0]:
            table.add_column(h)
        for r in rows[1:]:
            style = "red" if r[-1] == "FAIL" else None
            table.add_row(*r, style=style)
        console.print(table)
    console.print("[green]PASSED[/]" if report.passed else "[red]FAILED[/]: a verification gate failed")


def latency_table(result: VerifyReport) -> None:
    """The `compress verify` table: accuracy and latency per batch size, model vs baseline."""
    lat = result.latency
    table = Table(title=f"latency ({lat.provider}, {lat.threads} threads)", title_justify="left")
    cols = ["batch", "model p50 ms", "p90 ms", "p99 ms", "mean ms", "img/s"]
    if lat.baseline is not None:
        cols += ["baseline p50 ms", "speedup"]
    for c in cols:
        table.add_column(c)
    for b, row in lat.model.items():
        cells = [b, f"{row.p50_ms:.3f}", f"{row.p90_ms:.3f}", f"{row.p99_ms:.3f}", f"{row.mean_ms:.3f}",
                 f"{row.throughput:.0f}"]
        if lat.baseline is not None:
            tr = lat.baseline.get(b)
            cells += [f"{tr.p50_ms:.3f}" if tr else "–", _x((lat.speedup or {}).get(b))]
        table.add_row(*cells)
    console.print(table)
    console.print("accuracy: " + ", ".join(f"{k} {v:.2f}%" for k, v in result.accuracy.items())
                  + f" on {result.test_images} test images")
    for g in result.gates:
        console.print(f"gate {g.name}: {'pass' if g.passed else '[red]FAIL[/]'} (value {_val(g.value)}, limit {_val(g.limit)})")
