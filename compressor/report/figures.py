"""The pictures of a distillation run, written as PNGs into the run directory and embedded in report.md:

- attention.png: for a few test images, the teacher's attention map at each pair beside the student's before
  distillation (its initial weights) and after (the paper's figures);
- curves.png: every loss term and the train / validation accuracy per epoch (from the metrics history);
- latency.png: onnxruntime p50 latency per batch size, teacher vs student, with the speedup;
- search.png: a latency search's candidates, latency (as a fraction of the teacher's) against accuracy right
  after pruning, the target a vertical line and the chosen one marked.

matplotlib's object API with the Agg canvas: no display, and no global pyplot state in a library.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from compressor.core.errors import UserError
from compressor.core.fileio import atomic_path
from compressor.data.splits import DataBundle
from compressor.distill.at import attention_map
from compressor.distill.pairs import Pair, find_pairs
from compressor.distill.points import FeatureTap
from compressor.report.models import DistillReport, Latency, LatencySearch

FIGURE_IMAGES = 4  # test images in the attention figure, of distinct classes where the split allows


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def pick_images(labels: torch.Tensor, n: int = FIGURE_IMAGES) -> list[int]:
    """Indices of the first test image of each class, then the next images, up to n."""
    first: dict[int, int] = {}
    for i, y in enumerate(labels.tolist()):
        first.setdefault(y, i)
        if len(first) == n:
            break
    picked = sorted(first.values())
    picked += [i for i in range(len(labels)) if i not in picked][: n - len(picked)]
    return sorted(picked)


@torch.no_grad()
def attention_maps(model: nn.Module, x: torch.Tensor, paths: list[str], p: float, mapping: str) -> list[torch.Tensor]:
    """The model's attention map at each module path: [(N, H, W)] in eval mode, on the CPU."""
    tap = FeatureTap(model, paths, tuple(x.shape[1:]))
    was_training = model.training
    try:
        model.eval()
        model(x.to(next(model.parameters()).device))
        outs = tap.take()
    finally:
        tap.remove()
        model.train(was_training)
    return [attention_map(a, p, mapping).view(a.shape[0], *a.shape[-2:]).cpu() for a in outs]


CELL, GAP, GROUP_GAP = 64, 4, 12  # attention figure: pixels a panel, between panels, between pairs


def _cells(t: torch.Tensor) -> torch.Tensor:
    """(N, h, w) maps or (N, C, h, w) images -> (N, C, CELL, CELL) floats, bilinear (a 7x7 map shown smooth, as
    imshow would)."""
    t = t.float()
    t = t[:, None] if t.dim() == 3 else t
    return torch.nn.functional.interpolate(t, size=(CELL, CELL), mode="bilinear", align_corners=False)


def attention_mosaic(images: torch.Tensor, maps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """One RGB picture (H, W, 3) floats in [0, 1]: per row an image, then per pair its three maps (teacher |
    before | after) coloured on one scale per pair and row, so the three compare; and each column's centre (px)."""
    from matplotlib import colormaps

    inferno = colormaps["inferno"]
    n, pairs = len(images), len(maps)
    x0 = [0]  # each column's left edge: the input, then three maps a pair, a wider gap before each pair's three
    for j in range(3 * pairs):
        x0.append(x0[-1] + CELL + (GAP if j % 3 else GROUP_GAP))
    mosaic = np.ones((n * CELL + (n - 1) * GAP, x0[-1] + CELL, 3), dtype=np.float32)
    inputs = (_cells(images) / 255.0).expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()  # grey: 1 channel -> 3
    for j, triple in enumerate(maps):
        vmax = torch.stack([m.flatten(1).amax(1) for m in triple]).amax(0).clamp_min(1e-12)  # (N,): a scale a row
        for k, m in enumerate(triple):
            coloured = inferno((_cells(m)[:, 0] / vmax[:, None, None]).clamp(0, 1).numpy())[..., :3]
            col = x0[1 + 3 * j + k]
            for i in range(n):
                mosaic[i * (CELL + GAP):i * (CELL + GAP) + CELL, col:col + CELL] = coloured[i]
    for i in range(n):
        mosaic[i * (CELL + GAP):i * (CELL + GAP) + CELL, :CELL] = inputs[i]
    return mosaic, [x + CELL / 2 for x in x0]


def attention_figure(
    path: Path, images: torch.Tensor, x: torch.Tensor, titles: list[str], teacher: nn.Module, before: nn.Module,
    after: nn.Module, pairs: list[Pair], p: float = 2, mapping: str = "mean",
) -> None:
    """Rows: images; columns: the input, then per pair teacher | student before | student after.

    images: (N, C, H, W) uint8 for display; x: the same images normalised, as the models see them. Drawn as one
    picture on one axes (matplotlib spent ~1 s of every run laying out a grid of 40 axes).
    """
    students = [pair.student.module for pair in pairs]
    t_maps = attention_maps(teacher, x, [pair.teacher.module for pair in pairs], p, mapping)
    b_maps = attention_maps(before, x, students, p, mapping)
    a_maps = attention_maps(after, x, students, p, mapping)
    mosaic, centres = attention_mosaic(images, list(zip(t_maps, b_maps, a_maps)))
    height, width = mosaic.shape[:2]
    dpi = 110
    fig = Figure(figsize=(width * 1.25 / dpi + 0.9, height * 1.25 / dpi + 0.7), dpi=dpi)
    ax = fig.add_axes((0.08, 0.02, 0.9, 0.8))
    ax.imshow(mosaic, interpolation="bilinear")
    ax.set_axis_off()
    heads = ["input"] + [f"{who}\n{path_}" for pair in pairs for who, path_ in
                         (("teacher", pair.teacher.module), ("student before", pair.student.module),
                          ("student after", pair.student.module))]
    for c, head in zip(centres, heads):
        ax.text(c, -4, head, ha="center", va="bottom", fontsize=6)
    for i, title in enumerate(titles):
        ax.text(-6, i * (CELL + GAP) + CELL / 2, title, ha="right", va="center", fontsize=7)
    fig.suptitle("attention maps (mean |A|^p over channels, L2-normalised)", fontsize=8)
    _save(fig, path)


def curves_figure(path: Path, history: list[dict]) -> None:
    """Loss terms (log scale) and train / validation accuracy per epoch."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.4))
    loss_ax, acc_ax = fig.subplots(1, 2)
    names = list(dict.fromkeys(k for h in history for k in h.get("train_loss", {})))
    for name in names:
        values = [h["train_loss"].get(name, float("nan")) for h in history]
        loss_ax.plot(epochs, values, marker="o", label=name, linewidth=2.2 if name == "total" else 1.2)
    if all(v > 0 for h in history for v in h.get("train_loss", {}).values()):
        loss_ax.set_yscale("log")
    loss_ax.set(title="training loss terms (weighted)", xlabel="epoch")
    loss_ax.legend(fontsize=6, ncol=2)
    acc_ax.plot(epochs, [h.get("train_accuracy") for h in history], marker="o", label="train")
    if any("val_accuracy" in h for h in history):
        acc_ax.plot(epochs, [h.get("val_accuracy", float("nan")) for h in history], marker="s", label="validation")
    acc_ax.set(title="accuracy (%)", xlabel="epoch")
    acc_ax.legend(fontsize=7)
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.set_xticks(epochs)
    fig.tight_layout()
    _save(fig, path)


def latency_figure(path: Path, latency: Latency) -> None:
    """One panel per batch size (linear scale: the bars compare): p50 ms of teacher and student, speedup on top."""
    batches = list(latency.student)
    fig = Figure(figsize=(0.6 + 1.9 * len(batches), 3.0))
    axes = fig.subplots(1, len(batches), squeeze=False)[0]
    for ax, b in zip(axes, batches):
        ms = [latency.teacher[b].p50_ms, latency.student[b].p50_ms]
        bars = ax.bar(["teacher", "student"], ms, color=["#888888", "#d95f02"])
        ax.bar_label(bars, [f"{v:.3g}" for v in ms], fontsize=7)
        ax.set_title(f"batch {b}: {latency.speedup[b]:.2f}x faster", fontsize=8)
        ax.margins(y=0.15)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("p50 latency (ms)", fontsize=8)
    fig.suptitle(f"onnxruntime {latency.provider}, {latency.threads} threads", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def search_figure(path: Path, search: LatencySearch) -> None:
    """Every timed candidate: p50 / teacher's p50 (x) against accuracy right after pruning (y), by depth."""
    timed = [c for c in search.candidates if c.latency_ratio is not None and c.accuracy is not None]
    fig = Figure(figsize=(5.6, 3.6))
    ax = fig.subplots()
    for depth in sorted({len(c.removed_blocks) for c in timed}):
        group = sorted((c for c in timed if len(c.removed_blocks) == depth), key=lambda c: c.latency_ratio)
        ax.plot([c.latency_ratio for c in group], [c.accuracy for c in group], marker="o", linewidth=1,
                label=f"{depth} blocks removed")
    for c in timed:
        if c.parity_ok is False:
            ax.scatter([c.latency_ratio], [c.accuracy], marker="x", color="red", zorder=3)
        if c.chosen:
            ax.scatter([c.latency_ratio], [c.accuracy], s=160, facecolors="none", edgecolors="black", zorder=3,
                       label=f"chosen: {c.name}")
    if search.target is not None:
        ax.axvline(search.target, color="#d95f02", linestyle="--", label=f"target {search.target:g}")
    ax.set(xlabel=f"p50 latency / teacher's (batch {search.batch}, onnxruntime)",
           ylabel="accuracy right after pruning (%)", title="latency search: every candidate measured")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    _save(fig, path)


def _figure_pairs(teacher: nn.Module, student: nn.Module, input_shape, pairs: list[Pair]) -> list[Pair]:
    """The run's attention pairs; for a run without AT (the student alone, KD) the automatic ones, if any."""
    if pairs:
        return pairs
    try:
        return find_pairs("auto", teacher, student, input_shape)
    except UserError:  # no points of equal resolution: no attention figure
        return []


def write_figures(
    out: Path, report: DistillReport, teacher: nn.Module, student: nn.Module, initial_state: dict, data: DataBundle,
    recipe, pairs: list[Pair],
) -> dict[str, str]:
    """Write the run's PNGs under out/figures/; returns {title: path relative to out} for report["figures"]."""
    figures = {}
    pairs = _figure_pairs(teacher, student, data.input_shape, pairs)
    if pairs:
        idx = pick_images(data.test.labels)
        images = data.test.take(torch.as_tensor(idx)).images
        x = data.normalize(torch.device("cpu"))(images).contiguous()
        before = copy.deepcopy(student)
        before.load_state_dict(initial_state)
        titles = [data.classes[int(data.test.labels[i])] for i in idx]
        attention_figure(out / "figures" / "attention.png", images, x, titles, teacher, before, student, pairs,
                         recipe.distill.at.p, recipe.distill.at.mapping)
        figures["attention maps: teacher vs student before / after distillation"] = "figures/attention.png"
    history = report.distillation.history
    if history:
        curves_figure(out / "figures" / "curves.png", history)
        figures["training curves"] = "figures/curves.png"
    if report.latency.student:
        latency_figure(out / "figures" / "latency.png", report.latency)
        figures["latency per batch size"] = "figures/latency.png"
    search = report.student.sizing.search if report.student.sizing is not None else None
    if search is not None:
        search_figure(out / "figures" / "search.png", search)
        figures["latency search: latency vs accuracy of every candidate"] = "figures/search.png"
    return figures
