"""train.amp: auto picks bf16 on a CPU that computes it natively and fp32 elsewhere (issue 15), forced both ways.

The suite pins COMPRESSOR_CPU_BF16=0 (conftest) so its numbers are the same on AVX2 and AVX-512 machines; these
tests set it themselves.
"""

from __future__ import annotations

import json

import torch

from compressor.core.device import amp_choice, cpu_has_vnni, cpu_native_bf16

from .conftest import RECIPE, run_cli_here, sets


def test_auto_is_bf16_where_the_cpu_has_native_bf16_and_fp32_elsewhere(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("COMPRESSOR_CPU_BF16", "1")
    assert amp_choice("auto", cpu)[0] == torch.bfloat16
    monkeypatch.setenv("COMPRESSOR_CPU_BF16", "0")
    dtype, why = amp_choice("auto", cpu)
    assert dtype is None and "COMPRESSOR_CPU_BF16=0" in why
    # explicit settings are obeyed whatever the CPU
    assert amp_choice("off", cpu)[0] is None and amp_choice("bf16", cpu)[0] == torch.bfloat16
    # unforced, the answer is PyTorch's own CPU probe
    monkeypatch.delenv("COMPRESSOR_CPU_BF16")
    native, why = cpu_native_bf16()
    flags = open("/proc/cpuinfo").read()
    assert native == ("avx512_bf16" in flags or "amx_tile" in flags), why


def test_the_vnni_probe_reads_the_cpu():
    """int8's reduce_range follows it (tests/test_verify_cli.py); here the probe itself against the kernel's flags."""
    assert cpu_has_vnni() == ("avx512_vnni" in open("/proc/cpuinfo").read().split())


def test_the_choice_and_its_reason_are_printed_and_reported(small_teacher, tmp_path):
    for forced, dtype in (("1", "bfloat16"), ("0", "float32")):
        out = tmp_path / forced
        r = run_cli_here("distill", small_teacher, "--recipe", RECIPE, "--out", out,
                    *sets("data.limit_train=128", "train.batch_size=32", "student.arch=wrn-10-1", "device=cpu",
                          "verify.batch_sizes=[1]"), env={"COMPRESSOR_CPU_BF16": forced})
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"training precision: {dtype}" in r.stdout + r.stderr
        report = json.loads((out / "report.json").read_text())
        assert report["distillation"]["amp"] == {"setting": "auto", "dtype": dtype,
                                                 "reason": f"auto: COMPRESSOR_CPU_BF16={forced}"}
        # whatever the training precision, evaluation and export are fp32: the parity and agreement gates hold
        gates = {g["name"]: g["passed"] for g in report["gates"]}
        assert gates["max_abs_diff"] and gates["onnx_accuracy_agreement"]
