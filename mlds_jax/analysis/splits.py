"""Fixed train/validation/test splits, a pure function of the net id, and per-position
normalisation statistics, so that results on a dataset are comparable between papers.

Net ``n`` belongs to split ``split_of(n)`` for every tier of a dataset (growing the store
never moves a net), and DS1 net ``n`` and its DS2 twin ``n`` always share a split (a pair
never straddles train and test). The split is drawn from a 64-bit hash of ``(split seed,
n)`` (SplitMix64), not from the store's contents, so it needs nothing but the ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPLITS = ("train", "validation", "test")
TRAIN, VALIDATION, TEST = 0, 1, 2
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
DEFAULT_SEED = 0
SPLIT_DIR = "analysis"  # inside the store directory (beside README.md and figures/)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def split_of(ids, seed: int = DEFAULT_SEED, fractions=DEFAULT_FRACTIONS) -> np.ndarray:
    """(R,) int8 split code (0 train, 1 validation, 2 test) of each net id in ``ids``."""
    ids = np.asarray(ids, np.int64)
    fractions = np.asarray(fractions, np.float64)
    if fractions.shape != (3,) or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1):
        raise ValueError(f"fractions must be three non-negative shares summing to 1, got "
                         f"{fractions.tolist()}")
    if ids.size and ids.min() < 0:
        raise ValueError("net ids must be non-negative")
    h = _splitmix64(_splitmix64(np.full(ids.shape, seed, np.uint64)) ^ ids.astype(np.uint64))
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # uniform in [0, 1)
    edges = np.cumsum(fractions)[:2]
    return np.searchsorted(edges, u, side="right").astype(np.int8)


def normalization(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-position (mean, std) (P,) float32 over rows ``w`` (R, P) with finite weights; std
    floored at 1e-8 so that dividing by it is safe. Compute it on the train split only."""
    w = np.asarray(w, np.float64)
    w = w[np.isfinite(w).all(axis=1)]
    if not len(w):
        raise ValueError("no finite rows to take normalisation statistics from")
    return (w.mean(axis=0).astype(np.float32),
            np.maximum(w.std(axis=0), 1e-8).astype(np.float32))


def write_splits(store_dir: str | Path, n_nets: int, *, seed: int = DEFAULT_SEED,
                 fractions=DEFAULT_FRACTIONS, norms: dict[str, tuple] | None = None) -> Path:
    """Ship the split with the store: ``analysis/split.npy`` ((N,) int8), ``splits.json``
    (scheme, seed, fractions, counts) and ``normalization.npz`` (per-position mean and std of
    the train split for each weight encoding in ``norms``: {name: (mean, std)})."""
    d = Path(store_dir) / SPLIT_DIR
    d.mkdir(parents=True, exist_ok=True)
    split = split_of(np.arange(n_nets), seed, fractions)
    np.save(d / "split.npy", split)
    meta = {"scheme": "splitmix64(splitmix64(seed) xor net id) -> uniform [0, 1) -> "
                      "train | validation | test by cumulative fractions",
            "seed": int(seed), "fractions": [float(f) for f in fractions],
            "names": list(SPLITS), "n_nets": int(n_nets),
            "counts": {name: int((split == i).sum()) for i, name in enumerate(SPLITS)}}
    (d / "splits.json").write_text(json.dumps(meta, indent=1) + "\n")
    if norms:
        np.savez(d / "normalization.npz",
                 **{f"{k}_{stat}": v for k, (mean, std) in norms.items()
                    for stat, v in (("mean", mean), ("std", std))})
    return d


def load_split(ds, seed: int | None = None) -> np.ndarray:
    """(N,) int8 split of every net of the opened dataset ``ds``: the shipped one's scheme
    (its seed and fractions) when the store has one, else the default; ``seed`` overrides."""
    meta = ds.store.read_extra(f"{SPLIT_DIR}/splits.json")  # a directory or a release zip
    fractions, default = DEFAULT_FRACTIONS, DEFAULT_SEED
    if meta is not None:
        m = json.loads(meta)
        fractions, default = tuple(m["fractions"]), m["seed"]
    return split_of(np.arange(len(ds)), default if seed is None else seed, fractions)
