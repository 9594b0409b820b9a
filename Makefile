# satlab: `make demo` runs the main job, `make test` runs the test suite. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCHATTACKS := torchattacks==3.5.1

.PHONY: demo test install install-dev bench bench-data bench-engine bench-gpu bench-ensemble bench-precision clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The stamps re-run pip only when pyproject.toml or setup.py changes.
$(VENV)/.stamp-install: pyproject.toml setup.py | $(PY)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.stamp-dev: pyproject.toml setup.py | $(PY)
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps $(TORCHATTACKS)
	touch $@ $(VENV)/.stamp-install

install: $(VENV)/.stamp-install
install-dev: $(VENV)/.stamp-dev

demo: install
	$(VENV)/bin/satlab $(ARGS)

# one pytest worker per core (pytest-xdist); TEST_WORKERS=0 runs them in this process
TEST_WORKERS ?= 2
test: install-dev
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# maps at scale: memory and time against N, the engine against a plain loop, the paper69 dry run, costs, data path,
# maps at a stated precision
bench: install
	$(PY) experiments/benchmarks/scale_bench.py $(ARGS)

# the data path alone (section (f) of bench): a decode per pass against one decode per map, 1,000 generated JPEGs
bench-data: install
	$(PY) experiments/benchmarks/datapath_bench.py $(ARGS)

# one attack against bare steps and torchattacks, the engine against the pairwise loop
bench-engine: install-dev
	$(PY) experiments/benchmarks/engine_bench.py $(ARGS)

# on a machine with a CUDA GPU: throughput at 224 px in bf16, fraction of the FLOP-limited rate, paper-scale cost,
# the data path on the GPU
bench-gpu: install
	$(PY) experiments/benchmarks/gpu_bench.py $(ARGS)

bench-ensemble: install
	$(PY) experiments/benchmarks/ensemble_bench.py $(ARGS)

# maps at a stated precision: the stopping rule simulated on the paper's released matrix (../shared/reference), a real
# map (Fashion-MNIST) fixed against adaptive, the costed plan for every timm ImageNet-1k classifier (section (g) of bench)
bench-precision: install
	$(PY) experiments/benchmarks/precision_bench.py $(ARGS)

clean:
	rm -rf outputs multirun wandb .pytest_cache
