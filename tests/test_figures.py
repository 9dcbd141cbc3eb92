"""The run's pictures: valid PNGs from real models and real Fashion-MNIST images, embedded in report.md."""

import json

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from compressor.data.transform import Normalize
from compressor.data.datasets import load_data
from compressor.distill.pairs import find_pairs
from compressor.models import create_model
from compressor.recipe.schema import DataConfig
from compressor.verify.results import Latency, LatencyStats
from compressor.report.figures import (CELL, attention_figure, attention_maps, attention_mosaic, curves_figure,
                                       latency_figure, pick_images)

from .conftest import RECIPE, run_cli_here, sets


def png(path):
    img = mpimg.imread(path)  # raises on anything but a valid image
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert img[..., :3].std() > 0.01  # not a blank canvas
    return img


@pytest.mark.e2e  # trains or grows real models: tens of seconds on 2 cores
def test_attention_figure_from_real_models_and_images(tmp_path):
    data = load_data(DataConfig(limit_train=10, limit_test=60, val_fraction=0.0), 0)
    idx = pick_images(data.test.labels, 4)
    assert len(set(data.test.labels[idx].tolist())) == 4  # distinct classes
    images = data.test.images[idx]
    x = Normalize(data.mean, data.std, torch.device("cpu"))(images)
    torch.manual_seed(0)
    teacher, before, after = create_model("wrn-10-2", 10, 1), create_model("wrn-10-1", 10, 1), create_model("wrn-10-1", 10, 1)
    maps = attention_maps(teacher, x, ["group0", "group2"], 2, "mean")
    assert [tuple(m.shape) for m in maps] == [(4, 28, 28), (4, 7, 7)]
    torch.testing.assert_close(maps[1].flatten(1).norm(dim=1), torch.ones(4))
    pairs = find_pairs("auto", teacher, before, data.input_shape)
    assert [p.name for p in pairs] == ["group0", "group1", "group2"]
    attention_figure(tmp_path / "a.png", images, x, ["a", "b", "c", "d"], teacher, before, after, pairs)
    img = png(tmp_path / "a.png")
    assert img.shape[1] > img.shape[0]  # 10 columns, 4 rows

    # the picture drawn: per row the grey input, then per pair three maps on one colour scale per pair and image:
    # the map with the highest peak reaches the top of the colour map, one with half its peak half way (bilinear
    # upsampling lowers a one-pixel peak of a 28 px map by up to ~11 %)
    students = [p.student.module for p in pairs]
    triples = list(zip(attention_maps(teacher, x, [p.teacher.module for p in pairs], 2, "mean"),
                       attention_maps(before, x, students, 2, "mean"), attention_maps(after, x, students, 2, "mean")))
    mosaic, centres = attention_mosaic(images, triples)
    assert len(centres) == 10 and mosaic.shape[0] == 4 * CELL + 3 * 4 and mosaic.shape[2] == 3
    first = mosaic[:CELL, :CELL]
    assert (first[..., 0] == first[..., 1]).all() and (first[..., 1] == first[..., 2]).all() and first.std() > 0.05
    from matplotlib import colormaps

    lut = colormaps["inferno"](np.linspace(0, 1, 256))[:, :3]

    def peak(cell):  # the colour map's value at the cell's brightest pixel
        return float(np.abs(cell.reshape(-1, 1, 3) - lut[None]).sum(-1).argmin(1).max()) / 255

    ratios = []
    for i in range(4):
        for j, triple in enumerate(triples):
            cells = [mosaic[i * (CELL + 4):i * (CELL + 4) + CELL, int(c - CELL / 2):int(c + CELL / 2)]
                     for c in centres[1 + 3 * j:4 + 3 * j]]
            raw = [float(m[i].max()) for m in triple]
            for cell, r in zip(cells, raw):
                ratios.append(r / max(raw))
                assert abs(peak(cell) - r / max(raw)) < 0.15, (i, j, peak(cell), r / max(raw))
    assert min(ratios) < 0.7  # some maps peak well below their pair's brightest: a scale per map would show here


def test_curves_and_latency_figures(tmp_path):
    history = [{"epoch": e, "train_loss": {"ce": 1.0 / e, "kd": 2.0 / e, "at.group0": 0.1 / e, "total": 3.1 / e},
                "train_accuracy": 50.0 + e, "val_accuracy": 48.0 + e} for e in (1, 2, 3)]
    curves_figure(tmp_path / "c.png", history)
    png(tmp_path / "c.png")
    def row(ms):
        return LatencyStats(p50_ms=ms, p90_ms=ms, p99_ms=ms, mean_ms=ms, stdev_ms=0.0, min_ms=ms, runs=5,
                            throughput=1000.0 / ms)

    latency = Latency(provider="CPUExecutionProvider", threads=1, graph_optimization="all", io_binding=False,
                      onnxruntime="1", rounds=3, teacher={"1": row(2.0), "64": row(40.0)},
                      student={"1": row(0.8), "64": row(10.0)}, speedup={"1": 2.5, "64": 4.0},
                      speedup_interval={"1": [2.4, 2.6], "64": [3.9, 4.1]})
    latency_figure(tmp_path / "l.png", latency)
    png(tmp_path / "l.png")


def test_distill_report_embeds_the_figures(teacher_ckpt, tmp_path):
    out = tmp_path / "run"
    r = run_cli_here("distill", teacher_ckpt, "--recipe", RECIPE, "--out", out,
                *sets("data.limit_train=256", "data.limit_test=100", "verify.batch_sizes=[1,4]"))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "report.json").read_text())
    assert set(report["figures"].values()) == {"figures/attention.png", "figures/curves.png", "figures/latency.png"}
    md = (out / "report.md").read_text()
    for title, rel in report["figures"].items():
        assert f"![{title}]({rel})" in md
        png(out / rel)
    assert not list((out / "figures").glob(".*.tmp"))
