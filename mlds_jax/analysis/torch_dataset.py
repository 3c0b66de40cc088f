"""A store's split as training data: a PyTorch ``Dataset`` and a plain numpy batch iterator
(for JAX), reading rows straight from the store's memory map (or its raw chunk files).

Each item is ``(weights (P,) float32, label)``: the final weights of one net (or its
canonical form, or its initial weights), optionally normalised per position with the train
split's statistics, and a label from ``ds.metadata()`` (default: the task index).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mlds_jax.analysis import splits
from mlds_jax.analysis.symmetry import Symmetries


class WeightRows:
    """The numpy core shared by ``WeightDataset`` and ``iterate_batches``.

    ``ds``: an opened dataset or a store path. ``split``: "train", "validation", "test" or
    "all". Only finished nets (converged or capped) with finite weights are used, in
    ascending id order (``self.ids``). ``canonical``: weights in the canonical form of
    ``symmetry.Symmetries``. ``normalize``: subtract the per-position mean and divide by the
    std of the train split (of the same encoding; read from the store's shipped
    ``analysis/normalization.npz`` when it has one, else computed). ``label``: a
    ``metadata()`` column (``task``, ``epochs``, ``val_bit_accuracy``, ...) or None.
    ``in_memory``: read and encode the whole split once, at construction (for splits that
    fit in memory; many epochs then cost no reads or canonicalisation)."""

    def __init__(self, ds, split: str = "train", *, canonical: bool = False,
                 normalize: bool = False, label: str | None = "task", initial: bool = False,
                 seed: int | None = None, in_memory: bool = False):
        from mlds_jax.research.reader import Dataset, open_dataset

        self.ds = ds if isinstance(ds, Dataset) else open_dataset(ds)
        status = np.asarray(self.ds.status[:])
        finished = (status == 1) | (status == 2)
        codes = splits.load_split(self.ds, seed)
        if split != "all":
            if split not in splits.SPLITS:
                raise ValueError(f"split must be one of {splits.SPLITS} or 'all', got {split!r}")
            finished &= codes == splits.SPLITS.index(split)
        self.initial = initial
        self.canonical = canonical
        self._sym = Symmetries(self.ds.network, self.ds.layout) if canonical else None
        self._memmap = self._open_memmap()
        ids = np.flatnonzero(finished)
        self.ids = ids[np.isfinite(self._read(ids)).all(axis=1)] if ids.size else ids
        self.labels = (None if label is None
                       else self.ds.metadata()[label].to_numpy()[self.ids])
        if self.labels is not None and np.issubdtype(self.labels.dtype, np.integer):
            self.labels = self.labels.astype(np.int64)  # class indices, as torch losses want
        self.mean = self.std = None
        if normalize:
            self.mean, self.std = self._norms(codes, seed)
        self._cache = self.rows(np.arange(len(self.ids))) if in_memory else None

    def _open_memmap(self):
        try:
            return self.ds.weights_memmap(initial=self.initial)
        except Exception:  # not packed: read the raw chunk files per request
            return None

    def _read(self, ids: np.ndarray) -> np.ndarray:
        if self._memmap is not None:
            return np.asarray(self._memmap[ids], np.float32)
        return self.ds.load_weights(ids, initial=self.initial)

    def _norms(self, codes, seed):
        name = ("canonical" if self.canonical else "raw")
        shipped = Path(self.ds.path) / splits.SPLIT_DIR / "normalization.npz"
        if shipped.exists() and not self.initial and seed is None:
            z = np.load(shipped)
            if f"{name}_mean" in z:
                return z[f"{name}_mean"], z[f"{name}_std"]
        status = np.asarray(self.ds.status[:])
        train = np.flatnonzero(((status == 1) | (status == 2)) & (codes == splits.TRAIN))
        return splits.normalization(self._encode(self._read(train)))

    def _encode(self, w: np.ndarray) -> np.ndarray:
        return self._sym.canonicalize(w) if self._sym is not None else w

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, index) -> np.ndarray:
        """(R, P) float32 encoded rows for positions ``index`` into ``self.ids``."""
        if getattr(self, "_cache", None) is not None:
            return self._cache[np.asarray(index)]
        w = self._encode(self._read(self.ids[np.asarray(index)]))
        if self.mean is not None:
            w = (w - self.mean) / self.std
        return w.astype(np.float32, copy=False)


def iterate_batches(ds, split: str = "train", batch_size: int = 64, *, shuffle: bool = True,
                    seed: int = 0, drop_last: bool = False, **kwargs) -> Iterator[tuple]:
    """One epoch of ``(weights (B, P) float32, labels (B,))`` numpy batches over a split
    (``labels`` None when ``label=None``); ``kwargs`` as for ``WeightRows``. Shuffled by
    ``seed`` when ``shuffle``. Feed them to a jitted JAX step as they are."""
    rows = ds if isinstance(ds, WeightRows) else WeightRows(ds, split, **kwargs)
    order = (np.random.default_rng(seed).permutation(len(rows)) if shuffle
             else np.arange(len(rows)))
    for start in range(0, len(order), batch_size):
        if drop_last and len(index) < batch_size:
            break
        index = order[start: start + batch_size]
        labels = None if rows.labels is None else rows.labels[index]
        yield rows.rows(index), labels


def WeightDataset(ds, split: str = "train", **kwargs):
    """A ``torch.utils.data.Dataset`` over a store's split: item i is ``(weights (P,)
    float32 tensor, label tensor)`` for net ``dataset.ids[i]``; arguments as for
    ``WeightRows``. Needs torch (``pip install 'mlds-jax[torch]'``)."""
    import torch

    class _WeightDataset(torch.utils.data.Dataset):
        def __init__(self, rows: WeightRows):
            self.rows = rows
            self.ids = rows.ids

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            x = torch.from_numpy(self.rows.rows([int(i)])[0])
            if self.rows.labels is None:
                return x
            return x, torch.as_tensor(self.rows.labels[int(i)])

    return _WeightDataset(WeightRows(ds, split, **kwargs))
