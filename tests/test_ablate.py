"""`compress ablate` through the real CLI on a tiny Fashion-MNIST budget: every method and seed in the table,
gate failures recorded, finished runs reused, an unfinished one resumed, a changed recipe refused."""

import json
import statistics

import pytest

from compressor.jobs.ablate import GRAD_AT, METHODS, Method, methods_for, render_markdown, summarise
from compressor.recipe.load import load_recipe
from compressor.report.models import AblationRun, AblationTable

from .conftest import RECIPE, run_cli_here, sets

# min_speedup=100: a gate every run fails, to prove a failed gate is recorded and does not stop the ablation
TINY = sets("data.limit_train=128", "data.limit_test=100", "verify.batch_sizes=[1]", "verify.min_speedup=100")
EXPECTED_METHODS = {"student": [], "kd": ["kd"], "at": ["at"], "at+kd": ["kd", "at"], "f-actt": ["feature"]}


@pytest.mark.slow  # ten small distillations, each exporting teacher and student to ONNX
def test_ablate_through_the_cli(teacher_ckpt, tmp_path):
    out = tmp_path / "ablation"
    r = run_cli_here("ablate", teacher_ckpt, "--recipe", RECIPE, "--seeds", "2", "--out", out, *TINY, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads((out / "ablation.json").read_text())
    assert [m["method"] for m in result["methods"]] == list(EXPECTED_METHODS)
    assert result["seeds"] == [0, 1] and 0 < result["teacher"]["error"] < 100
    for m in result["methods"]:
        assert [run["seed"] for run in m["runs"]] == [0, 1]
        for run in m["runs"]:
            report = json.loads((out / m["method"] / f"seed{run['seed']}" / "report.json").read_text())
            assert report["distillation"]["methods"] == EXPECTED_METHODS[m["method"]]
            assert (out / m["method"] / f"seed{run['seed']}" / "student.onnx").is_file()
            assert run["failed_gates"] == ["min_speedup"] and not run["reused"]
            assert run["error"] == 100 - report["student"]["onnx_accuracy"]
            assert run["latency_p50_ms"] == report["latency"]["student"]["1"]["p50_ms"] > 0
        errors = [run["error"] for run in m["runs"]]
        assert m["error_mean"] == statistics.fmean(errors) and m["error_std"] == statistics.stdev(errors)
        assert m["params"] == report["student"]["params"]
    md = (out / "ablation.md").read_text()
    for label in ("student alone", "KD", "AT", "AT+KD", "F-ActT", "teacher", "±", "min_speedup (2/2)"):
        assert label in md, label

    # the seeds are really different runs
    a = (out / "at" / "seed0" / "student.onnx").read_bytes()
    assert a != (out / "at" / "seed1" / "student.onnx").read_bytes()

    # rerun: finished runs are reused; one that lost its report after training is resumed (export and verify only)
    (out / "f-actt" / "seed1" / "report.json").unlink()
    r = run_cli_here("ablate", teacher_ckpt, "--recipe", RECIPE, "--seeds", "2", "--out", out, *TINY, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    again = json.loads((out / "ablation.json").read_text())
    reused = {(m["method"], run["seed"]): run["reused"] for m in again["methods"] for run in m["runs"]}
    assert reused.pop(("f-actt", 1)) is False and all(reused.values())
    resumed = json.loads((out / "f-actt" / "seed1" / "report.json").read_text())
    assert resumed["distillation"]["resumed_from_epoch"] == 1  # its 1 epoch was already complete: not redone

    # other settings in the same --out: refused before anything is overwritten
    before = (out / "ablation.json").read_text()
    r = run_cli_here("ablate", teacher_ckpt, "--recipe", RECIPE, "--seeds", "2", "--out", out, *TINY, "--set", "train.lr=0.05")
    assert r.returncode == 2 and "finished with a different recipe (train changed)" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert (out / "ablation.json").read_text() == before


def test_ablate_rejects_bad_input(cli, tmp_path):
    r = cli("ablate", tmp_path / "none.pt", "--recipe", RECIPE, "--seeds", "0", "--out", tmp_path / "a")
    assert r.exit_code == 2 and "Invalid value for '--seeds'" in r.output
    r = cli("ablate", tmp_path / "none.pt", "--recipe", RECIPE, "--out", tmp_path / "a", "--set", "distill.at.beta=-1")
    assert r.exit_code == 2 and "distill.at.beta" in r.output
    (tmp_path / "file").write_text("x")
    r = cli("ablate", tmp_path / "none.pt", "--recipe", RECIPE, "--out", tmp_path / "file")
    assert r.exit_code == 2 and "not a directory" in r.output and (tmp_path / "file").read_text() == "x"
    r = cli("ablate", tmp_path / "none.pt", "--recipe", RECIPE, "--out", tmp_path / "b")
    assert r.exit_code == 2 and "none.pt: file not found" in r.output and not (tmp_path / "b").exists()


def test_methods_and_table():
    assert methods_for(load_recipe(RECIPE)) == METHODS
    assert methods_for(load_recipe(RECIPE, ["distill.grad_at.enabled=true"])) == [*METHODS, GRAD_AT]
    assert Method("x", "x", at=True).overrides() == [
        "distill.at.enabled=true", "distill.kd.enabled=false", "distill.feature.enabled=false",
        "distill.grad_at.enabled=false"]
    rows = [AblationRun(dir=f"seed{s}", seed=s, reused=False, failed_gates=[], error=e, params=1000, arch="a",
                        latency_batch="1", latency_p50_ms=1.0, teacher_latency_p50_ms=2.0, train_seconds=2.0,
                        methods=["ce"], teacher={"arch": "t", "params": 1e6, "error": 5.0})
            for s, e in enumerate((10.0, 12.0, 14.0))]
    m = summarise(METHODS[0], rows)
    assert m.error_mean == 12.0 and m.error_std == 2.0
    md = render_markdown(AblationTable(recipe="r", recipe_path="r.yaml", overrides=[], teacher_path="t.pt", epochs=1,
                                       seeds=[0, 1, 2], train_images=10, test_images=5,
                                       teacher={"arch": "t", "params": 1e6, "error": 5.0}, inits=None, methods=[m]))
    assert "| student alone | 12.00 ± 2.00 |" in md and "| 12.00 ± 2.00 | 5.00 |" in md


def test_ablate_init_axis_through_the_cli(teacher_ckpt, tmp_path):
    """--init scratch --init teacher: each method runs once per init (here two methods, one seed), the grown
    student is a pruned teacher and the scratch one a sized network, each with its own --init-set overrides."""
    out = tmp_path / "ablation"
    grid = ("--init", "scratch", "--init", "teacher", "--init-set", "teacher:train.lr=0.02", "--methods", "student,at+kd")
    r = run_cli_here("ablate", teacher_ckpt, "--recipe", RECIPE, "--seeds", "1", "--out", out, *grid,
                *TINY, "--set", "student.arch=null", "--set", "student.size=0.25", timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads((out / "ablation.json").read_text())
    assert [(m["init"], m["method"]) for m in result["methods"]] == [
        ("scratch", "student"), ("scratch", "at+kd"), ("teacher", "student"), ("teacher", "at+kd")]
    assert result["inits"] == {"scratch": [], "teacher": ["train.lr=0.02"]}
    for m in result["methods"]:
        report = json.loads((out / m["init"] / m["method"] / "seed0" / "report.json").read_text())
        sizing = report["student"]["sizing"]
        assert sizing["init"] == m["init"] and report["distillation"]["lr"] == (0.02 if m["init"] == "teacher" else 0.1)
        assert (sizing["how"] == "pruned") == (m["init"] == "teacher")
        assert report["distillation"]["methods"] == EXPECTED_METHODS[m["method"]]
        assert report["student"]["params"] <= 0.25 * report["teacher"]["params"]
    md = (out / "ablation.md").read_text()
    assert "| student alone (teacher) |" in md and "| student init | student alone | AT+KD | teacher |" in md
    assert "| scratch | " in md and "| teacher | " in md

    r = run_cli_here("ablate", teacher_ckpt, "--recipe", RECIPE, "--out", out, "--init", "pruned", *TINY)
    assert r.returncode == 2 and "Invalid value for '--init'" in r.stderr and "'pruned' is not one of" in r.stderr
    r = run_cli_here("ablate", teacher_ckpt, "--recipe", RECIPE, "--out", out, "--methods", "at,xx", *TINY)
    assert r.returncode == 2 and "--methods: unknown xx" in r.stderr
