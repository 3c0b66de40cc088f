"""Strict settings for every test: implicit rank promotion raises, warnings are errors
(pyproject), float32 throughout, nothing silently runs on float64."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_enable_x64", False)
