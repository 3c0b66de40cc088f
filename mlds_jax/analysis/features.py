"""Encoders: turn flat weight rows (N, P) into feature matrices.

- ``tensor_statistics``: per tensor of the layout, mean, variance and the 0, 25, 50, 75,
  100 % quantiles (the baseline of Unterthiner et al., 2020, "Predicting neural network
  accuracy from weights").
- ``functional_features``: each net's output probabilities on a fixed set of probe
  sequences (the same for every net), flattened.
"""

from __future__ import annotations

import math

import numpy as np

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
STAT_NAMES = ("mean", "var") + tuple(f"q{int(q * 100)}" for q in QUANTILES)


def tensor_statistics(w: np.ndarray, layout: list[dict]) -> tuple[np.ndarray, list[str]]:
    """(N, 7 T) float32 statistics of every tensor of every row, and the feature names."""
    w = np.asarray(w, np.float32).reshape(-1, w.shape[-1])
    cols, names = [], []
    for spec in layout:
        t = w[:, spec["offset"]: spec["offset"] + math.prod(spec["shape"])]
        cols += [t.mean(axis=1), t.var(axis=1), *np.quantile(t, QUANTILES, axis=1)]
        names += [f"{spec['name']}:{s}" for s in STAT_NAMES]
    return np.stack(cols, axis=1).astype(np.float32), names


def probe_sequences(network: dict, n_sequences: int = 32, length: int = 32,
                    seed: int = 0) -> np.ndarray:
    """(S, T, input_size) float32 probe inputs, fixed by ``seed``: for the 9-bit bus of
    DS1/DS2, random commands as in training (strobe with probability 1/2, data bits
    uniform); for other input sizes, one-hot random symbols (DS3)."""
    rng = np.random.default_rng(seed)
    size = int(network["input_size"])
    if size == 9:
        from mlds_jax.tasks.machines import random_commands

        return random_commands(rng, n_sequences, length, 0.5).astype(np.float32)
    symbols = rng.integers(0, size, (n_sequences, length))
    return np.eye(size, dtype=np.float32)[symbols]


def functional_features(network: dict, w: np.ndarray, probes: np.ndarray, *,
                        chunk: int = 256) -> np.ndarray:
    """(N, S * T * O) float32: sigmoid of every net's logits on the probe sequences (S, T, I),
    computed by the JAX model (``mlds_jax.train.models.apply``), ``chunk`` nets per call."""
    import jax
    import jax.numpy as jnp

    from mlds_jax.train import models

    cfg = models.NetworkConfig(**{k: (tuple(v) if k == "head_sizes" else v)
                                  for k, v in network.items()
                                  if k in models.NetworkConfig.__dataclass_fields__})
    layout = models.param_layout(cfg)
    xs = jnp.asarray(probes, jnp.float32)
    fn = jax.jit(jax.vmap(lambda flat: jax.nn.sigmoid(
        models.apply(cfg, models.unflatten_params(flat, layout), xs))))
    w = np.asarray(w, np.float32)
    out = []
    for start in range(0, len(w), chunk):
        part = w[start: start + chunk]
        pad = chunk - len(part) if len(w) > chunk else 0  # one compiled shape for every chunk
        batch = np.concatenate([part, np.zeros((pad, w.shape[1]), np.float32)]) if pad else part
        out.append(np.asarray(fn(jnp.asarray(batch)))[: len(part)].reshape(len(part), -1))
    return np.concatenate(out) if out else np.zeros((0, probes[0].size), np.float32)
