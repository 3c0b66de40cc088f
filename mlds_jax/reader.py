"""Reading a dataset: lazy arrays, per-task summaries, one row back to its parameter pytree.

Only the store and the layout table recorded in it are used, so a researcher can read a
dataset without JAX.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import zarr

from mlds_jax.store import DatasetStore


@dataclasses.dataclass(frozen=True)
class TaskSummary:
    """Learnability of one task over its finished nets."""

    task: str
    finished: int  # nets with a non-zero status
    total: int  # rows of this task in the store
    converged: int
    capped: int
    diverged: int
    median_epochs: float  # over converged nets; NaN if none
    p90_epochs: float  # over converged nets; NaN if none
    mean_val_accuracy: float  # over finished nets (first accuracy column)

    @property
    def converged_share(self) -> float:
        return self.converged / self.finished if self.finished else math.nan


class Dataset:
    """A dataset store opened read-only. Arrays are lazy `zarr.Array`s, indexed like numpy."""

    def __init__(self, path: str | Path):
        self.store = DatasetStore.open(path, mode="r")
        self.attrs = self.store.attrs
        self.task_names: list[str] = list(self.attrs["task_names"])
        self.layout: list[dict] = list(self.attrs["layout"])

    def __len__(self) -> int:
        return self.store.n_nets

    def __getattr__(self, name: str) -> zarr.Array:
        # weights, initial_weights, task, seed, status, epochs, loss_curve, val_accuracy
        if name.startswith("_") or name in ("store", "attrs", "task_names", "layout"):
            raise AttributeError(name)
        try:
            return self.store.array(name)
        except KeyError:
            raise AttributeError(f"dataset has no array {name!r}") from None

    @property
    def config(self) -> dict:
        return self.attrs["config"]

    def net(self, n: int, initial: bool = False) -> dict:
        """Row `n` as the nested parameter dict (PyTorch shapes), numpy arrays."""
        if not 0 <= n < len(self):
            raise IndexError(f"net {n} out of range [0, {len(self)})")
        flat = np.asarray((self.initial_weights if initial else self.weights)[n])
        params: dict = {}
        for spec in self.layout:
            *parents, leaf = spec["name"].split("/")
            node = params
            for p in parents:
                node = node.setdefault(p, {})
            size = math.prod(spec["shape"])
            node[leaf] = flat[spec["offset"] : spec["offset"] + size].reshape(spec["shape"])
        return params

    def state_dict(self, n: int) -> dict[str, np.ndarray]:
        """Row `n` keyed by PyTorch `state_dict` keys, for `module.load_state_dict`."""
        flat = np.asarray(self.weights[n])
        return {
            s["torch_key"]: flat[s["offset"] : s["offset"] + math.prod(s["shape"])].reshape(s["shape"])
            for s in self.layout
        }

    def summary(self) -> list[TaskSummary]:
        """One row per task: counts per status, epochs of converged nets, mean accuracy."""
        return [
            TaskSummary(task=r["name"], finished=r["n"], total=r["total"],
                        converged=r["converged"], capped=r["capped"], diverged=r["diverged"],
                        median_epochs=r["median_epochs"], p90_epochs=r["p90_epochs"],
                        mean_val_accuracy=r["mean_val_accuracy"])
            for r in self.store.summary()
        ]


def open_dataset(path: str | Path) -> Dataset:
    """Open a dataset store read-only, lazily (nothing but metadata is read here)."""
    return Dataset(path)
