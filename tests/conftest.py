"""Strict settings for every test: implicit rank promotion raises, warnings are errors
(pyproject), float32 throughout, nothing silently runs on float64. One compilation cache
for the whole suite (both xdist workers and every `mlds` subprocess, which inherit the
variable): the same small configs are trained by dozens of subprocesses."""

import os
from pathlib import Path

import jax

from mlds_jax.train import compile_cache

os.environ.setdefault("MLDS_JAX_COMPILE_CACHE",
                      str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax-compile"))
compile_cache.enable()
compile_cache.cpu_optimization()  # as the `mlds` command compiles

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_enable_x64", False)
