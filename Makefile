# The README's two commands are `make demo` and `make test`: each sets up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Mean epochs per DS3 net at its recipe, from the DS3 learnability run (docs/recipe-ds3.md).
DS3_MEAN_EPOCHS ?= 300

.PHONY: setup demo test bench bench-ds3 bench-ds4 gpu-wheels clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# A small DS1 tier (4 nets per machine) with the release recipe as it is (cap 2,000 epochs;
# a store an earlier recipe left at out/ds1-demo.zarr is replaced, one of this recipe resumed),
# with a progress bar; then its table, and its converged nets checked on fresh traces.
# DEMO_ARGS: extra `mlds generate` options (tests/test_readme.py runs the demo with a short cap).
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/mlds generate ds1 --out out/ds1-demo.zarr --per-task 4 --replace-other-config $(DEMO_ARGS)
	$(BIN)/mlds info out/ds1-demo.zarr
	$(BIN)/python benchmarks/fresh_traces.py out/ds1-demo.zarr

# Two test processes (whole files each, so module fixtures are built once): the suite is
# mostly compiles and subprocesses, which overlap on 2 cores.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py --learnability benchmarks/learnability-ds1.json

# DS3 (LSTM 4x64): the whole-net kernel and XLA's recurrence at a few population sizes, the
# matmul ceiling, and the 10,000-net projection at the DS3 recipe's measured mean epochs
# (docs/recipe-ds3.md); about 5 minutes on 2 cores.
bench-ds3: $(STAMP)
	$(BIN)/python benchmarks/throughput.py --config ds3 --slots 1 8 32 --epoch-sequences 64 \
		--repeats 2 --no-torch --mean-epochs $(DS3_MEAN_EPOCHS)

# DS4 (4,970-param CNN on 8x8 digits): the trainer at two population sizes against a
# torch.func ensemble and plain PyTorch, the matmul ceiling, the 10,000-net projection;
# about 2 minutes on 2 cores (docs/ds4.md).
bench-ds4: $(STAMP)
	$(BIN)/python benchmarks/ds4_throughput.py

# Wheels the GPU machine's image lacks (it has no package registry): see benchmarks/gpu.sh.
gpu-wheels: $(STAMP)
	$(BIN)/pip download --quiet --dest .wheels --only-binary :all: --python-version 3.12 \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 zarr google-crc32c

clean:
	rm -rf out .pytest_cache
