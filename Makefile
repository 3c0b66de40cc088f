# The README's two commands are `make demo` and `make test`: each sets up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench gpu-wheels clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# A small DS1 tier (4 nets per machine) with the release recipe as it is (cap 1,000 epochs),
# with a progress bar; then its table, and its converged nets checked on fresh traces.
demo: $(STAMP)
	$(BIN)/mlds generate ds1 --out out/ds1-demo.zarr --per-task 4
	$(BIN)/mlds info out/ds1-demo.zarr
	$(BIN)/python benchmarks/fresh_traces.py out/ds1-demo.zarr

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py --mean-epochs 325

# Wheels the GPU machine's image lacks (it has no package registry): see benchmarks/gpu.sh.
gpu-wheels: $(STAMP)
	$(BIN)/pip download --quiet --dest .wheels --only-binary :all: --python-version 3.12 \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 zarr google-crc32c

clean:
	rm -rf out .pytest_cache
