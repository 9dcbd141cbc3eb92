#!/bin/bash
# Trained teachers of the mobile families (issue 25, item 5): a teacher of each ARCH trained on 3-channel 32 px
# Fashion-MNIST (EPOCHS epochs on LIMIT images, SGD lr 0.05), then a student grown at a quarter of its parameters,
# distilled with AT+KD for one epoch on the same images, exported, parity-checked and timed at batch 1 and 64
# (docs/RESULTS.md, "Issue 25: trained teachers"). Usage: benchmarks/trained_families.sh [ARCH ...]
# (EPOCHS=2 LIMIT=20000 by default); outputs in runs/trained_families/ARCH/.
set -euo pipefail
cd "$(dirname "$0")/.."
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(mobilenet_v3_small efficientnet_b0)
common=(--set data.image_size=32 --set data.channels=3 --set "data.limit_train=${LIMIT:-20000}" --set data.limit_test=2000
        --set train.lr=0.05 --set train.amp=off)
for arch in "${archs[@]}"; do
  dir="runs/trained_families/${arch//:/_}"
  mkdir -p "$dir"
  [ -f "$dir/teacher.pt" ] || .venv/bin/compress train --recipe recipes/fashion_teacher.yaml --out "$dir/teacher.pt" \
    --set teacher.arch="$arch" --set "teacher.epochs=${EPOCHS:-2}" --set "train.epochs=${EPOCHS:-2}" "${common[@]}"
  .venv/bin/compress distill "$dir/teacher.pt" --recipe tests/smoke.yaml --out "$dir/run" --force --student-size 0.25 \
    --set teacher.arch="$arch" --set student.arch=null --set student.init=teacher --set train.epochs=1 "${common[@]}" \
    --set 'verify.batch_sizes=[1,64]' --set verify.min_speedup=1.0 --set verify.max_accuracy_drop=null || true
  .venv/bin/python benchmarks/family_report.py "$dir/run/report.json" "$arch"
done
