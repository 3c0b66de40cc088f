"""MLDS claim 2, as numbers: DS1 net n and DS2 net n share their initial weights and data
order and differ only by the trigger in DS2's training data. How far apart does that move
them, and can a detector tell from the weights which nets were trained with the trigger?"""

from __future__ import annotations

import math

import numpy as np

from mlds_jax.analysis.probes import binary_scores


def layer_slices(layout: list[dict]) -> dict[str, list[tuple[int, int]]]:
    """{layer: [(start, stop), ...]} of the flat vector: ``rnn/l{k}`` (the four tensors of
    recurrent layer k) and ``head_{i}`` (weight and bias)."""
    out: dict[str, list[tuple[int, int]]] = {}
    for s in layout:
        prefix, leaf = s["name"].split("/")
        key = f"rnn/l{leaf.rsplit('_l', 1)[1]}" if prefix == "rnn" else prefix
        out.setdefault(key, []).append((s["offset"], s["offset"] + math.prod(s["shape"])))
    return out


def _take(w, slices):
    return np.concatenate([w[:, a:b] for a, b in slices], axis=1)


def twin_divergence(w1: np.ndarray, w2: np.ndarray, task: np.ndarray, layout: list[dict]) -> dict:
    """Per layer: the distance between each DS1 net and its DS2 twin (rows aligned: row i of
    ``w1`` and of ``w2`` are net i of each store), against the spread of DS1 nets of the same
    task (the median distance between two different DS1 nets of that task).

    Returns {layer: {"twin_median", "spread_median", "ratio_median"}} with the ratio
    computed per twin pair against its task's spread, plus "all" for the whole vector. A
    ratio well below 1: the trigger moves a net less than the spread between independently
    initialised nets of its task."""
    w1, w2, task = np.asarray(w1, np.float64), np.asarray(w2, np.float64), np.asarray(task)
    keep = np.isfinite(w1).all(axis=1) & np.isfinite(w2).all(axis=1)
    w1, w2, task = w1[keep], w2[keep], task[keep]
    layers = dict(layer_slices(layout))
    layers["all"] = [(0, w1.shape[1])]
    out = {}
    for name, slices in layers.items():
        a, b = _take(w1, slices), _take(w2, slices)
        twin = np.linalg.norm(a - b, axis=1)
        spread = np.full(len(task), np.nan)
        for t in np.unique(task):
            rows = a[task == t]
            if len(rows) < 2:
                continue
            d = np.linalg.norm(rows[:, None] - rows[None], axis=2)
            spread[task == t] = np.median(d[~np.eye(len(rows), dtype=bool)])
        out[name] = {"twin_median": float(np.median(twin)),
                     "spread_median": float(np.nanmedian(spread)),
                     "ratio_median": float(np.nanmedian(twin / spread)), "n_pairs": int(len(twin))}
    return out


def trigger_detection(f1: np.ndarray, f2: np.ndarray, split: np.ndarray, *,
                      model: str = "linear", twin_reference: bool = False, seed: int = 0) -> dict:
    """Detect "trained with the trigger" from features of DS1 nets ``f1`` (R, F) and their
    DS2 twins ``f2`` (R, F) (row i of both: net i), on the fixed test split (twins share a
    split, so no pair is in train and test at once).

    Without a reference each net is a sample of its own features (label 1 for DS2). With
    ``twin_reference`` each net is described relative to its twin, ``f(net) - f(twin)``: the
    detector is told the pair and must say which of the two carries the trigger."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if twin_reference:
        f1, f2 = f1 - f2, f2 - f1
    x = np.concatenate([f1, f2])
    y = np.concatenate([np.zeros(len(f1)), np.ones(len(f2))])
    s = np.concatenate([split, split])
    out = binary_scores(x, y, s, model, seed=seed)
    out["twin_reference"] = bool(twin_reference)
    return out
