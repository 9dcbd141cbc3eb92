# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing, installs the package, makes sure Fashion-MNIST is present, and runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DATA   ?= data
RUN    ?= runs/fashion_at

.PHONY: demo test data venv clean bench bench-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Debian's dataset-fashion-mnist where apt exists (no network beyond the package mirror needed),
# else torchvision's own download. The IDX files end up decompressed under $(DATA)/FashionMNIST/raw/.
data: venv
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) || \
		echo "apt could not install dataset-fashion-mnist; falling back to torchvision's download"; \
	fi
	$(PY) -m compressor.datasets $(DATA)

# The main job end to end on the embedded default: train the WRN-16-2 teacher (reused when present),
# then distil WRN-16-1 with AT+KD, export to ONNX, verify with onnxruntime, write the report.
demo: data
	@test -f $(RUN)/teacher.pt || $(VENV)/bin/compress train --recipe recipes/fashion_at.yaml --out $(RUN)/teacher.pt
	@# exit 1 = a verification gate failed: every artifact is written and the report names the gate; on this
	@# short CPU budget the student can miss max_accuracy_drop, which the demo shows rather than hides
	$(VENV)/bin/compress distill $(RUN)/teacher.pt --recipe recipes/fashion_at.yaml --out $(RUN) --force || test $$? -eq 1
	@echo "demo outputs: $(RUN)/ (report.md, report.json, student.onnx, student.pt, figures/)"

test: data
	$(PY) -m pytest -q

# Throughput against the floor and against torchdistill, then ONNX vs eager latency (docs/BENCHMARKS.md).
# torchdistill lives in its own venv, never in the package's dependencies; the venv reuses .venv's torch through
# a .pth file and installs torchdistill alone (--no-deps). BENCH_ARGS=--quick for the short run.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: $(VENV)/.installed
	$(PY) benchmarks/torchdistill_run.py $(BENCH_VENV) && touch $@

bench-venv: $(BENCH_VENV)/.installed

bench: data bench-venv
	$(PY) benchmarks/distill_throughput.py --bench-venv $(BENCH_VENV) $(BENCH_ARGS)
	$(PY) benchmarks/latency.py $(if $(findstring --quick,$(BENCH_ARGS)),--quick)

clean:
	rm -rf runs build *.egg-info
