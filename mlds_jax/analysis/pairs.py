"""MLDS claim 2, as numbers: DS1 net n and DS2 net n share their initial weights and data
order and differ only by the trigger in DS2's training data. How far apart does that move
them, and can a detector tell from the weights which nets were trained with the trigger?"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial.distance import pdist

from mlds_jax.analysis.probes import binary_scores, wilson_interval
from mlds_jax.analysis.splits import TEST, TRAIN, VALIDATION


def layer_slices(layout: list[dict]) -> dict[str, list[tuple[int, int]]]:
    """{layer: [(start, stop), ...]} of the flat vector, a layer being the tensors that share
    the name's first part: ``rnn/l{k}`` (the four tensors of recurrent layer k), ``head_{i}``
    (weight and bias); for the CNN of DS4 ``conv_{i}`` and ``head``."""
    out: dict[str, list[tuple[int, int]]] = {}
    for s in layout:
        prefix, _, leaf = s["name"].partition("/")
        key = f"rnn/l{leaf.rsplit('_l', 1)[1]}" if prefix == "rnn" and "_l" in leaf else prefix
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
            spread[task == t] = np.median(pdist(rows))  # every pair of different nets
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


# ---- DS4: trojaned CNNs against their clean twins ---------------------------------------

OUT_OF_FOLD = 3  # a split code that is none of train, validation, test: the row is left out
CHANCE = {"roc_auc": 0.5, "accuracy": 0.5}  # one clean and one trojaned net per pair


def sorted_weight_features(w: np.ndarray, layout: list[dict], points: int = 17) -> np.ndarray:
    """(R, points * T) float32: each tensor's sorted weights read at ``points`` evenly
    spaced quantiles (0 to 1): a permutation-invariant summary finer than the seven
    ``tensor_statistics``."""
    w = np.asarray(w, np.float32)
    q = np.linspace(0.0, 1.0, points)
    cols = [np.quantile(w[:, s["offset"]: s["offset"] + math.prod(s["shape"])], q, axis=1).T
            for s in layout]
    return np.concatenate(cols, axis=1).astype(np.float32)


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic: the chance that a random positive scores above
    a random negative, ties counted one half."""
    y, p = np.asarray(y).astype(bool), np.asarray(p, np.float64)
    pos, neg = p[y], p[~y]
    if not len(pos) or not len(neg):
        return math.nan
    greater = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    return float(greater / (len(pos) * len(neg)))


def pair_bootstrap_auc(p_clean: np.ndarray, p_trojan: np.ndarray, *, n_boot: int = 1000,
                       seed: int = 0) -> list[float]:
    """95 % percentile interval of the ROC-AUC over ``n_boot`` resamples of whole pairs
    (entry i of both arrays: the scores of pair i's clean and trojaned net), so that the
    two twins, which are not independent samples, always leave or enter together."""
    p_clean, p_trojan = np.asarray(p_clean, np.float64), np.asarray(p_trojan, np.float64)
    n = len(p_clean)
    if n < 2:
        return [math.nan, math.nan]
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n, bool), np.ones(n, bool)]
    aucs = [roc_auc(y, np.r_[p_clean[i], p_trojan[i]])
            for i in rng.integers(0, n, (n_boot, n))]
    low, high = np.quantile(aucs, [0.025, 0.975])
    return [float(low), float(high)]


def _detect_pairs(f1, f2, split, model, seed, n_boot) -> dict:
    """binary_scores on pairs (row i of f1: a clean net, of f2: its trojaned twin, both in
    fold ``split[i]``), with a pair-bootstrap interval of the ROC-AUC and a Wilson interval
    of the accuracy (which treats the 2 n test nets as independent: a little narrow)."""
    counts = {name: int((split == code).sum()) for name, code in
              (("train", TRAIN), ("validation", VALIDATION), ("test", TEST))}
    if min(counts.values()) == 0:
        return {"skipped": "a fold has no pairs", "pairs": counts}
    x = np.concatenate([f1, f2])
    y = np.r_[np.zeros(len(f1)), np.ones(len(f2))]
    out = binary_scores(x, y, np.r_[split, split], model, seed=seed, keep_scores=True)
    p = out.pop("p_test")
    n = len(p) // 2  # the test rows: the clean twins, then the trojaned ones, same order
    out["roc_auc_ci95"] = pair_bootstrap_auc(p[:n], p[n:], n_boot=n_boot, seed=seed)
    out["accuracy_ci95"] = list(wilson_interval(round(out["accuracy"] * 2 * n), 2 * n))
    out["test_pairs"] = int(n)
    out["chance"] = dict(CHANCE)
    return out


def trojan_detection(f_clean: np.ndarray, f_trojan: np.ndarray, split: np.ndarray,
                     held_out: np.ndarray, *, model: str = "linear",
                     twin_reference: bool = False, seed: int = 0, n_boot: int = 1000) -> dict:
    """Tell a trojaned net from a clean one by features of its weights. Row i of
    ``f_clean`` and ``f_trojan`` (R, F): pair i, its split code ``split[i]`` (from its id,
    so twins are always in the same fold) and ``held_out[i]`` (its trigger family is
    held out). Three measurements:

    - ``all``: every pair, fitted on the train and validation splits, tested on the test
      split (the mixed, unpaired benchmark);
    - ``seen``: fitted on the train and validation pairs of families not held out, tested
      on the test pairs of those families;
    - ``held_out``: the same detector, tested on every pair of a held-out family (none of
      which it saw).

    Each: ROC-AUC with a pair-bootstrap 95 % interval, accuracy with a Wilson interval,
    cross-entropy, the test sizes and chance. ``twin_reference``: each net is described
    by ``f(net) - f(twin)`` (the detector is told the pair)."""
    f1, f2 = np.asarray(f_clean, np.float64), np.asarray(f_trojan, np.float64)
    split, held_out = np.asarray(split).astype(np.int8), np.asarray(held_out).astype(bool)
    keep = np.isfinite(f1).all(axis=1) & np.isfinite(f2).all(axis=1)
    f1, f2, split, held_out = f1[keep], f2[keep], split[keep], held_out[keep]
    if twin_reference:
        f1, f2 = f1 - f2, f2 - f1
    seen_split = np.where(held_out, OUT_OF_FOLD, split).astype(np.int8)
    unseen_split = np.where(held_out, TEST, np.where(split == TEST, OUT_OF_FOLD, split))
    out = {"all": _detect_pairs(f1, f2, split, model, seed, n_boot),
           "seen": _detect_pairs(f1, f2, seen_split, model, seed, n_boot),
           "model": model, "twin_reference": bool(twin_reference)}
    if held_out.any():
        out["held_out"] = _detect_pairs(f1, f2, unseen_split.astype(np.int8), model, seed,
                                        n_boot)
    return out


def pair_folds(ids: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(R,) fold index in [0, folds) of each pair id, a pure function of (seed, id) as
    ``split_of``: the same hash, cut into ``folds`` equal shares."""
    from mlds_jax.analysis.splits import _splitmix64

    ids = np.asarray(ids, np.int64)
    h = _splitmix64(_splitmix64(np.full(ids.shape, seed, np.uint64)) ^ ids.astype(np.uint64))
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.minimum((u * folds).astype(np.int64), folds - 1)


def cv_trojan_detection(f_clean: np.ndarray, f_trojan: np.ndarray, ids: np.ndarray,
                        held_out: np.ndarray, *, folds: int = 5, model: str = "linear",
                        seed: int = 0, n_boot: int = 1000) -> dict:
    """Grouped cross-validation over every pair, for a tighter interval than one test
    split: fold k of ``pair_folds(ids)`` is scored by a detector fitted on the others
    (fold k + 1 its validation fold), twins always in one fold; the ROC-AUC (pair-bootstrap
    interval), accuracy and cross-entropy are of the pooled out-of-fold scores. ``all``:
    every pair; ``seen``: the pairs of families not held out only (each detector fitted
    on those only). The interval resamples the scored pairs, not the refits, so it is a
    little narrow: on synthetic twins without a signal (200 pairs, six draws) the pooled
    AUC scattered over 0.47-0.53, and one interval, [0.40, 0.48], missed 0.5."""
    f1, f2 = np.asarray(f_clean, np.float64), np.asarray(f_trojan, np.float64)
    ids, held_out = np.asarray(ids), np.asarray(held_out).astype(bool)
    keep = np.isfinite(f1).all(axis=1) & np.isfinite(f2).all(axis=1)
    f1, f2, ids, held_out = f1[keep], f2[keep], ids[keep], held_out[keep]
    fold = pair_folds(ids, folds, seed)
    out = {"folds": int(folds), "model": model}
    for part, rows in (("all", np.ones(len(ids), bool)), ("seen", ~held_out)):
        p1, p2 = np.full(len(ids), np.nan), np.full(len(ids), np.nan)
        for k in range(folds):
            split = np.where(fold == k, TEST, np.where(fold == (k + 1) % folds, VALIDATION,
                                                       TRAIN)).astype(np.int8)
            split[~rows] = OUT_OF_FOLD
            te = split == TEST
            if not te.any() or not (split == TRAIN).any() or not (split == VALIDATION).any():
                continue
            r = binary_scores(np.concatenate([f1, f2]), np.r_[np.zeros(len(f1)), np.ones(len(f2))],
                              np.r_[split, split], model, seed=seed, keep_scores=True)
            n = int(te.sum())
            p1[te], p2[te] = r["p_test"][:n], r["p_test"][n:]
        scored = np.isfinite(p1)
        if scored.sum() < 2:
            out[part] = {"skipped": "fewer than two pairs scored"}
            continue
        y = np.r_[np.zeros(scored.sum()), np.ones(scored.sum())]
        p = np.clip(np.r_[p1[scored], p2[scored]], 1e-6, 1 - 1e-6)
        n = int(scored.sum())
        correct = int(((p > 0.5) == y).sum())
        out[part] = {"roc_auc": roc_auc(y, p),
                     "roc_auc_ci95": pair_bootstrap_auc(p1[scored], p2[scored], n_boot=n_boot,
                                                        seed=seed),
                     "accuracy": correct / (2 * n),
                     "accuracy_ci95": list(wilson_interval(correct, 2 * n)),
                     "cross_entropy": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
                     "test_pairs": n, "chance": dict(CHANCE)}
    return out
