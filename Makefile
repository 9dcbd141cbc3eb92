# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing, installs the package, makes sure Fashion-MNIST is present, and runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DATA   ?= data
RUN    ?= runs/fashion_at

.PHONY: demo teacher test test-fast data venv clean bench bench-venv browser postgres

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
	$(PY) -m compressor.data $(DATA)

# The demo's teacher ships in the repository (teachers/, with its card); `make teacher` rebuilds it from its recipe
# (20 epochs on all of Fashion-MNIST: ~30 min on an AVX-512 2-core CPU, about 4x that on an AVX2 one).
TEACHER := teachers/fashion_mnist-wrn-16-2.pt

teacher: data
	$(VENV)/bin/compress train --recipe recipes/fashion_teacher.yaml --out $(TEACHER) --force
	cd teachers && sha256sum fashion_mnist-wrn-16-2.pt > fashion_mnist-wrn-16-2.pt.sha256
	@echo "rebuilt $(TEACHER); update teachers/README.md with its test accuracy and sha256"

# The main job end to end on the embedded default: check the shipped teacher's sha256, grow a student of at most
# 25% of its parameters from it (structured pruning), distil it with KD, export it to ONNX, verify it with
# onnxruntime, write the report. Exit 0 only when every gate passes.
demo: data
	@cd teachers && sha256sum --quiet -c fashion_mnist-wrn-16-2.pt.sha256 || \
		{ echo "$(TEACHER) does not match its sha256 (teachers/README.md); run make teacher to rebuild it"; exit 2; }
	$(VENV)/bin/compress distill $(TEACHER) --recipe recipes/fashion_at.yaml --out $(RUN) --force
	@echo "demo outputs: $(RUN)/ (report.md, report.json, student.onnx, student.pt, figures/)"

# The service's web page is tested in a real browser: Debian's chromium + chromium-driver, installed here where apt
# exists (CI runs on a fresh machine). Without them the test fails rather than skips.
browser:
	@if ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } && command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1)) || \
		echo "apt could not install chromium and chromium-driver: the web page test will fail"; \
	fi

# The service's store tests run against a real PostgreSQL server, which they start themselves in a temporary folder
# (initdb + pg_ctl, as the postgres user when run as root): Debian's postgresql, installed here where apt exists.
# Without it those tests fail rather than skip. (S3 is moto's standalone server, from the dev extra; the Ray cluster
# tests start their nodes with the venv's own `ray start`.) Non-interactive: a clean image's debconf asks nothing.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		export DEBIAN_FRONTEND=noninteractive; \
		(apt-get install -y -qq postgresql >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq postgresql >/dev/null 2>&1)) || \
		echo "apt could not install postgresql: the service's PostgreSQL tests will fail"; \
	fi

# The suite runs on every core (pytest-xdist), one file's tests on one worker, one thread a worker: on a 2-core
# machine two tests overlap their single-threaded parts (imports, process start-up, servers' polls) instead of
# two threads of one test spinning; the tests' recipes give onnxruntime one thread too (verify.threads: 1). A third
# worker only shared the two cores, and ordering the files by measured duration instead of xdist's own order (by
# their number of tests) made no difference (BENCHMARKS section 11). `make test-fast` is the unit tier alone (no
# whole job, no server): about a minute.
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile

test: data browser postgres
	$(PYTEST)

test-fast: data
	$(PYTEST) -m "not e2e"

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
