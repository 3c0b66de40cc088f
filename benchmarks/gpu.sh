#!/usr/bin/env bash
# Issue 3's GPU check as ONE call on the device machine (an H200 running the workplace's CUDA
# image: python3 3.12 with jax[cuda], flax, optax, torch; it lacks zarr, whose wheels travel):
#
#   make gpu-wheels                                   # here, once: .wheels/ (gitignored)
#   device run: command="bash benchmarks/gpu.sh", carry=[".wheels"], timeout_s=540
#
# About 6-8 minutes: the model/trainer tests on the GPU, then DS1 throughput with
# populations of 1,024 to 16,384 nets (XLA recurrence; the CPU kernel does not apply) and the
# projected time for all 50,000 DS1 nets. Results land in $OUT (gpu.txt, gpu.json, tests.txt).
set -uo pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
python3 -m pip install --quiet --no-index --find-links .wheels zarr google-crc32c
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
# Semantics first: forward and training equal to torch, vectorisation, on this backend.
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_models.py tests/test_train.py \
    2>&1 | tail -15 | tee "$OUT/tests.txt"
timeout 300 python3 benchmarks/throughput.py --no-torch --recurrence auto \
    --slots 1024 4096 16384 --epoch-sequences 512 --mean-epochs 325 \
    --json "$OUT/gpu.json" 2>&1 | tee -a "$OUT/gpu.txt"
