#!/bin/bash
# A student grown at a quarter of the parameters from a random-init teacher of each family, distilled for one
# epoch on 1,024 3-channel 32 px Fashion-MNIST images, exported, parity-checked and timed at batch 1 and 64
# (docs/RESULTS.md, "Issue 25: every family"). Usage: benchmarks/grown_families.sh [ARCH ...]; outputs in
# runs/families/ARCH/.
set -euo pipefail
cd "$(dirname "$0")/.."
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(mobilenet_v3_small efficientnet_b0 regnet_x_400mf convnext_tiny timm:convnext_atto resnet18)
for arch in "${archs[@]}"; do
  dir="runs/families/${arch//:/_}"
  mkdir -p "$dir"
  .venv/bin/python -c "import torch; from compressor.models import create_model; torch.manual_seed(0); \
torch.save(create_model('$arch', 10, 3).state_dict(), '$dir/teacher.pt')"
  .venv/bin/compress distill "$dir/teacher.pt" --recipe tests/smoke.yaml --out "$dir/run" --force --student-size 0.25 \
    --set teacher.arch="$arch" --set student.arch=null --set student.init=teacher --set data.image_size=32 \
    --set data.channels=3 --set data.limit_train=1024 --set data.limit_test=200 --set train.epochs=1 \
    --set train.lr=0.02 --set 'verify.batch_sizes=[1,64]' --set verify.min_speedup=1.0 \
    --set verify.max_accuracy_drop=null --set verify.min_runs=20 --set verify.min_seconds=0 || true
  .venv/bin/python benchmarks/family_report.py "$dir/run/report.json" "$arch"
done
