"""One line of a family benchmark's run (benchmarks/grown_families.sh, trained_families.sh): accuracies, size,
parity against its limit, speed-ups at batch 1 and 64, whether BatchNorm statistics were recomputed, the verdict.
Usage: python benchmarks/family_report.py RUN/report.json ARCH"""

import json
import sys

r = json.load(open(sys.argv[1]))
g = {x["name"]: x for x in r["gates"]}
s = r["student"]
print(f"{sys.argv[2]}: teacher {r['teacher']['accuracy']:.2f}%, student {s['onnx_accuracy']:.2f}% (after pruning "
      f"{s['sizing']['accuracy_after_pruning']:.2f}%), params {s['params']:,} of {r['teacher']['params']:,}, "
      f"parity {g['max_abs_diff']['value']:.3g} (limit {g['max_abs_diff']['limit']:.3g}), speed-up batch 1 "
      f"{r['latency']['speedup']['1']:.2f}x, batch 64 {r['latency']['speedup']['64']:.2f}x, BatchNorm recomputed: "
      f"{r['distillation']['bn_recalibrated']}, passed {r['passed']}")
