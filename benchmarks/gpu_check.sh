#!/usr/bin/env bash
# The GPU check: the GPU-marked tests and the throughput benchmark on CUDA, then one table. Within 8 minutes
# (time limits 180 + 200 + 120 s; on an H200 the whole script took under 3 minutes).
#
#   bash benchmarks/gpu_check.sh        # from anywhere; on a machine with a CUDA GPU and a python3 that has torch
#
# Made for an offline machine (docs/BENCHMARKS.md, "GPU check", says how to prepare one):
#   - Fashion-MNIST under data/FashionMNIST/raw/, carried with the tree (nothing is downloaded);
#   - the package runs from the tree (PYTHONPATH), not installed: the machine's own torch is used as it is;
#   - wheels in .whl/ (what python3 there lacks: pydantic and its parts, torchdistill) go to a private target.
# Results: $OUT (default /tmp/gpu_check): gpu.txt, pytest.log, throughput.json/.log (bf16, with --compile),
# throughput_fp32.json/.log, table.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: could not install the wheels in .whl/"; exit 2; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" COMPRESSOR_DATA="$PWD/data" PYTHONUNBUFFERED=1 COLUMNS=200

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/gpu.txt" 2>&1
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "gpu_check: $PY sees no CUDA device ($(cat "$OUT/gpu.txt"))"; exit 2; }

# 1. the GPU-marked tests (pytest exits 5 when none is collected); 3 minutes at most
timeout 180 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest.log"
tests_rc=${PIPESTATUS[0]}

# 2. the throughput benchmark on CUDA, twice: with the recipe's default AMP (train.amp auto: bf16 autocast for
#    compressor's step and the floor), and in fp32 (train.amp off), torchdistill's precision; torchdistill runs as
#    it comes (fp32, 8 DataLoader workers: its per-image pipeline on 1 CPU would starve the GPU); the bf16 run also
#    measures train.compile (--compile); 200 + 120 s at most
timeout 200 "$PY" benchmarks/distill_throughput.py --device cuda --steps 100 --repeats 3 --no-install --compile \
  --td-workers 8 >"$OUT/throughput.json" 2>"$OUT/throughput.log"
bench_rc=$?
timeout 120 "$PY" benchmarks/distill_throughput.py --device cuda --steps 100 --repeats 3 --no-install \
  --td-workers 8 --set train.amp=off >"$OUT/throughput_fp32.json" 2>"$OUT/throughput_fp32.log"
bench32_rc=$?

"$PY" - "$OUT" "$tests_rc" "$bench_rc" "$bench32_rc" <<'EOF' | tee "$OUT/table.txt"
import json, sys
from pathlib import Path

out, tests_rc = Path(sys.argv[1]), int(sys.argv[2])
rcs = dict(zip(("throughput", "throughput_fp32"), sys.argv[3:]))
gpu = (out / "gpu.txt").read_text().strip() or "unknown GPU"
log = (out / "pytest.log").read_text().strip().splitlines()
tests = {0: "passed", 5: "none collected"}.get(tests_rc, f"FAILED (exit {tests_rc})")
rows = [("GPU", gpu), ("pytest -m gpu", f"{tests}: {log[-1] if log else ''}")]
for name, rc in rcs.items():
    try:
        r = json.loads((out / f"{name}.json").read_text().strip().splitlines()[-1])
        td = r["torchdistill_img_s"]
        rows += [
            (f"[{name}] device", f"{r['device']}, {r['threads']} CPU threads, amp {r['settings']['amp']}"),
            ("a  student train step", f"{r['student_train_img_s']:.0f} img/s"),
            ("b  teacher inference", f"{r['teacher_infer_img_s']:.0f} img/s"),
            ("floor 1/(1/a+1/b)", f"{r['floor_img_s']:.0f} img/s"),
            ("c  compressor AT+KD (fit)",
             f"{r['compressor_img_s']:.0f} img/s  ratio_to_floor {r['ratio_to_floor']:.2f}"),
            *([("e  compressor, train.compile",
                 f"{r['compressor_compiled_img_s']:.0f} img/s  compile warm-up {r['compile_warmup_s']:.0f} s")]
              if "compressor_compiled_img_s" in r else []),
            ("d  torchdistill AT+KD", f"{td:.0f} img/s  ratio_vs_torchdistill {r['ratio_vs_torchdistill']:.2f}"
             if td else f"n/a ({r['torchdistill_reason']})"),
            ("samples (img/s)", json.dumps(r["samples_img_s"])),
        ]
    except (OSError, ValueError, KeyError, IndexError) as e:
        tail = (out / f"{name}.log").read_text().strip().splitlines()[-3:]
        rows.append((f"[{name}]", f"FAILED (exit {rc}): {' | '.join(tail) or e}"))
width = max(len(k) for k, _ in rows)
for k, v in rows:
    print(f"{k:<{width}}  {v}")
EOF
[ "$tests_rc" -eq 0 ] || [ "$tests_rc" -eq 5 ] || exit 1
[ "$bench_rc" -eq 0 ] && [ "$bench32_rc" -eq 0 ] || exit 1
