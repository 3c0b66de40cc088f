"""Reading a dataset: lazy arrays, memory maps, a metadata table, selections, one net back as
its parameter pytree or as a PyTorch module.

Only the store and the tables recorded in it are used, so a researcher can read a dataset
without JAX (pandas for the table; torch only for ``to_torch``).

Two ways to the weights (see ``mlds_jax.rawrows`` for the layout decision):

- ``ds.weights`` is the lazy ``zarr.Array`` (N, P): index it like numpy, any zarr v3 tool
  reads it too.
- ``ds.load_weights(ids)`` reads rows straight from the raw chunk files (one positioned read
  for one net, one copy for everything), and ``ds.weights_memmap()`` is the zero-copy
  (N, P) ``numpy.memmap``: available once ``mlds pack`` stored the weights as one block
  (or when the store has a single chunk); ``ds.chunk_memmaps()`` works on any store.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path

import numpy as np
import zarr

from mlds_jax.store.dataset_store import DatasetStore
from mlds_jax.store.rawrows import RawRows
from mlds_jax.store.schema import STATUS_NAMES, STATUS_PENDING, WEIGHT_ARRAYS, StoreError

STATUS_CODES = {name: code for code, name in STATUS_NAMES.items()}


class SelectionError(ValueError):
    """A selection that names no nets or cannot be parsed; one line naming the problem."""


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
    # over finished nets: the lowest criterion column (the worst pin; DS3: symbol accuracy)
    mean_criterion_accuracy: float
    mean_sequences_right: float  # over finished nets: share of sequences entirely right

    @property
    def converged_share(self) -> float:
        return self.converged / self.finished if self.finished else math.nan


class Dataset:
    """A dataset store opened read-only. Arrays are lazy `zarr.Array`s, indexed like numpy:
    ``weights``, ``initial_weights`` (N, P), ``task``, ``seed``, ``status``, ``epochs`` (N,),
    ``loss_curve`` (N, E), ``val_accuracy`` (N, A). N is read once, at open."""

    def __init__(self, path: str | Path):
        self.store = DatasetStore.open(path, mode="r")
        self.path = self.store.path
        self.attrs = self.store.attrs
        self.task_names: list[str] = list(self.attrs["task_names"])
        self.accuracy_names: list[str] = list(self.attrs["accuracy_names"])
        self.layout: list[dict] = list(self.attrs["layout"])
        self._raw: dict[str, RawRows | None] = {}
        self._layout = _weights_layout(self.path)

    def __len__(self) -> int:
        return self.store.n_nets

    def __repr__(self) -> str:
        return (f"<Dataset {self.attrs['dataset']!r} at {str(self.path)!r}: {len(self)} nets, "
                f"{self.n_params} params, tasks {', '.join(self.task_names)}>")

    def __getattr__(self, name: str) -> zarr.Array:
        # weights, initial_weights, task, seed, status, epochs, loss_curve, val_accuracy
        if name.startswith("_") or name in ("store", "attrs", "task_names", "layout", "path",
                                            "accuracy_names"):
            raise AttributeError(name)
        if name in WEIGHT_ARRAYS:
            self._follow_repack()
        try:
            return self.store.array(name)
        except KeyError:
            raise AttributeError(f"dataset has no array {name!r}") from None

    def _follow_repack(self) -> None:
        """`mlds pack` (run by `mlds generate` when a store completes) swaps the weights
        arrays for new directories; a reader opened before sees them here and reopens, so
        it reads the new files rather than the deleted old ones (which read as NaN)."""
        now = _weights_layout(self.path)
        if now is None:
            raise StoreError(f"store at {self.path} is being repacked by another process; "
                             f"open it again when that is done")
        if now != self._layout:
            self.store = DatasetStore.open(self.path, mode="r")
            self._raw, self._layout = {}, now

    @property
    def config(self) -> dict:
        """The full resolved config the dataset was made with (recipe included)."""
        return self.attrs["config"]

    @property
    def network(self) -> dict:
        """The architecture shared by every net: cell, input_size, hidden_size, num_layers,
        head_sizes, output_size, activation."""
        return self.config["network"]

    @property
    def n_params(self) -> int:
        return self.store.n_params

    # ---- weights ------------------------------------------------------------------------

    def _raw_rows(self, initial: bool) -> RawRows | None:
        name = "initial_weights" if initial else "weights"
        self._follow_repack()
        if name not in self._raw:
            self._raw[name] = RawRows.of(self.store, name)
        return self._raw[name]

    def load_weights(self, ids=None, *, initial: bool = False) -> np.ndarray:
        """(R, P) float32 copy of the rows ``ids`` (any order; None: all N rows), final
        weights or ``initial`` ones. Reads the raw chunk files directly where the layout
        allows (always for stores written by this package), else through zarr."""
        if ids is not None:
            ids = self._checked_ids(ids)
        for _ in range(3):  # a pack that swapped the files during the read: read again
            raw = self._raw_rows(initial)
            if raw is not None:
                rows = raw.read(ids)
            else:
                a = self.initial_weights if initial else self.weights
                rows = np.asarray(a[:] if ids is None else a.oindex[ids])
            if _weights_layout(self.path) == self._layout:
                return rows
        raise StoreError(f"store at {self.path} keeps being repacked while it is read; open "
                         f"it again when that is done")

    def weights_memmap(self, *, initial: bool = False) -> np.ndarray:
        """(N, P) read-only zero-copy ``numpy.memmap`` of every net's weights.

        Needs the rows in one file, in order: true after ``mlds pack PATH`` (and for a store
        of a single chunk). A store as the generator writes it has one file per chunk of
        rows; then this raises a StoreError that says so: use ``chunk_memmaps()``, or
        ``load_weights()`` for a copy."""
        raw = self._raw_rows(initial)
        if raw is None:
            raise self._no_raw_rows()
        return raw.memmap()

    def chunk_memmaps(self, *, initial: bool = False) -> list[np.ndarray | None]:
        """One read-only memmap per chunk of rows: entry i is rows ``[i * C, i * C + len)``
        (C = ``chunk_rows``), None for a chunk never written (all NaN)."""
        raw = self._raw_rows(initial)
        if raw is None:
            raise self._no_raw_rows()
        return raw.chunk_memmaps()

    def _no_raw_rows(self) -> StoreError:
        if self.store.archive:
            return StoreError(f"{self.path} is a release archive: a memory map needs the "
                              f"unpacked store; run `mlds release --unpack {self.path} --out "
                              f"DIR` (or `unzip {self.path} -d DIR && mlds pack DIR`)")
        return StoreError(f"weights of {self.path} are not stored as raw float32 rows; run "
                          f"`mlds pack {self.path}` to store them so")

    @property
    def chunk_rows(self) -> int:
        """Rows per chunk along N (the unit of ``chunk_memmaps`` and of one writer)."""
        return self.weights.chunks[0]

    def automata(self) -> list:
        """DS3: the dataset's automata (`mlds_jax.tasks.automata.Automaton`), index = task;
        with them a net's training data can be regenerated from the store alone."""
        from mlds_jax.tasks.automata import unstack_automata

        prefix = "automaton_"
        stacked = {k[len(prefix):]: v for k, v in self.store.tables().items()
                   if k.startswith(prefix)}
        if not stacked:
            raise ValueError(f"{self.attrs['dataset']} has no automata (not a DS3 store)")
        return unstack_automata(stacked)

    def net(self, n: int, initial: bool = False) -> dict:
        """Row `n` as the nested parameter dict (PyTorch shapes), numpy arrays."""
        flat = self._row(n, initial)
        params: dict = {}
        for spec in self.layout:
            *parents, leaf = spec["name"].split("/")
            node = params
            for p in parents:
                node = node.setdefault(p, {})
            size = math.prod(spec["shape"])
            node[leaf] = flat[spec["offset"] : spec["offset"] + size].reshape(spec["shape"])
        return params

    def state_dict(self, n: int, initial: bool = False) -> dict[str, np.ndarray]:
        """Row `n` keyed by PyTorch `state_dict` keys, for `module.load_state_dict`."""
        flat = self._row(n, initial)
        return {
            s["torch_key"]: flat[s["offset"] : s["offset"] + math.prod(s["shape"])].reshape(s["shape"])
            for s in self.layout
        }

    def to_torch(self, n: int, initial: bool = False):
        """Net `n` as a ``torch.nn.Module`` (``mlds_jax.torch_export.TorchNet``, eval mode):
        (B, T, input_size) or (T, input_size) -> logits (..., T, output_size), the same
        outputs as the JAX model. Needs torch (``pip install 'mlds-jax[torch]'``)."""
        from mlds_jax.research.torch_export import torch_net

        return torch_net(self.network, self.layout, self._row(n, initial))

    def _row(self, n: int, initial: bool) -> np.ndarray:
        if not -len(self) <= n < len(self):
            raise IndexError(f"net {n} out of range [0, {len(self)})")
        return self.load_weights([n % len(self)], initial=initial)[0]

    def _checked_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"ids must be a 1-D integer array, got shape {ids.shape} "
                             f"dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"net ids must lie in [0, {len(self)}), got "
                             f"{ids.min()}..{ids.max()}")
        return ids

    # ---- metadata and selection ---------------------------------------------------------

    def tasks(self) -> np.ndarray:
        """(N,) int: each net's task index; a pending net gets the task it will be trained
        on, ``n mod K`` (the stored value is only written when the net finishes)."""
        task = self.store.read_array("task").astype(np.int64)
        pending = self.store.read_array("status") == STATUS_PENDING
        task[pending] = np.flatnonzero(pending) % max(len(self.task_names), 1)
        return task

    def metadata(self):
        """One row per net as a ``pandas.DataFrame`` indexed by net id: task (index),
        task_name, seed, status (code), status_name, epochs, and one column per accuracy
        name (``val_bit_accuracy``, ``val_worst_pin_accuracy``, ``val_sequences_right``; see
        ``attrs["accuracy_names"]``), and one per per-net recipe value (``learning_rate``,
        ``chrono_max``, ...; ``attrs["hyperparameter_names"]``), and ``restarts`` where the
        recipe restarts nets (``per_net/restarts``). Pending nets have status
        "pending", their planned task, epochs 0 and NaN accuracies and recipe values."""
        import pandas as pd

        status = self.store.read_array("status")
        task = self.tasks()
        names = self.task_names + [str(t) for t in range(len(self.task_names), task.max(
            initial=-1) + 1)]
        acc = self.store.read_array("val_accuracy")
        columns = {
            "task": task.astype(np.int32),
            "task_name": pd.Categorical.from_codes(task, categories=names),
            "seed": self.store.read_array("seed"),
            "status": status,
            "status_name": pd.Categorical.from_codes(
                status.astype(np.int64), categories=[STATUS_NAMES[c] for c in sorted(STATUS_NAMES)]),
            "epochs": self.store.read_array("epochs"),
            "seq_steps": self.store.read_array("seq_steps"),
        }
        for j, name in enumerate(self.accuracy_names):
            columns[name] = acc[:, j]
        hyper = self.store.read_array("hyperparameters")
        for j, name in enumerate(self.attrs["hyperparameter_names"]):
            columns[name] = hyper[:, j]
        if "restarts" in self.store.per_net_names():  # a recipe with restart_epochs
            columns["restarts"] = self.store.read_per_net("restarts")
        return pd.DataFrame(columns, index=pd.RangeIndex(len(self), name="net"))

    def select(self, spec: str | None = None, *, task=None, status=None) -> np.ndarray:
        """Ascending net ids (int64) matching every condition given.

        ``spec`` is a selection string: terms joined by ``&``, each one of
          ``all``;  ids and ranges ``0:100``, ``1,5,9``, ``0:1000:5``, ``7,20:30`` (Python
          slices: end excluded, every id must exist);  ``task=NAME|INDEX[,...]``;
          ``status=NAME|CODE[,...]`` with names pending, converged, capped, diverged, or
          ``finished`` (any but pending).
        e.g. ``"task=ParityMachine&status=converged"``, ``"0:500&status=finished"``.
        ``task`` and ``status`` keywords take the same values as names, indices or lists.
        Raises SelectionError (one line) for anything it cannot read."""
        keep = np.ones(len(self), bool)
        terms = [] if spec is None else [t.strip() for t in str(spec).split("&")]
        if spec is not None and not any(terms):
            raise SelectionError("empty selection; use e.g. 'all', '0:100' or 'task=NAME'")
        for term in terms:
            if not term:
                raise SelectionError(f"empty term in selection {spec!r}")
            key, sep, value = term.partition("=")
            if not sep:
                keep &= self._id_mask(term)
            elif key.strip() == "task":
                keep &= np.isin(self.tasks(), self._task_codes(value.split(",")))
            elif key.strip() == "status":
                keep &= np.isin(self.store.read_array("status"), self._status_codes(value.split(",")))
            else:
                raise SelectionError(f"unknown selection key {key.strip()!r} in {term!r} "
                                     f"(known: task, status)")
        if task is not None:
            keep &= np.isin(self.tasks(), self._task_codes(_as_list(task)))
        if status is not None:
            keep &= np.isin(self.store.read_array("status"), self._status_codes(_as_list(status)))
        return np.flatnonzero(keep).astype(np.int64)

    def _id_mask(self, term: str) -> np.ndarray:
        n = len(self)
        mask = np.zeros(n, bool)
        if term == "all":
            mask[:] = True
            return mask
        for part in term.split(","):
            part = part.strip()
            if not re.fullmatch(r"\d+|\d*:\d*(:\d+)?", part):
                raise SelectionError(f"cannot read {part!r} as a net id or range (e.g. 7, "
                                     f"0:100, 0:1000:5) or key=value (task=, status=)")
            if ":" not in part:
                ids = np.array([int(part)])
            else:
                bits = part.split(":")
                start = int(bits[0]) if bits[0] else 0
                stop = int(bits[1]) if bits[1] else n
                step = int(bits[2]) if len(bits) > 2 and bits[2] else 1
                if step < 1:
                    raise SelectionError(f"range {part!r} needs a positive step")
                if stop < start:
                    raise SelectionError(f"range {part!r} ends before it starts")
                ids = np.arange(start, stop, step)
            if ids.size and ids.max() >= n:
                raise SelectionError(f"net {ids.max()} in {part!r} does not exist: the store has "
                                     f"{n} nets (ids 0..{n - 1})")
            mask[ids] = True
        return mask

    def _task_codes(self, values) -> list[int]:
        codes = []
        for v in values:
            v = str(v).strip()
            if v in self.task_names:
                codes.append(self.task_names.index(v))
            elif v.isdigit() and int(v) < len(self.task_names):
                codes.append(int(v))
            else:
                raise SelectionError(f"unknown task {v!r} (known: {', '.join(self.task_names)}"
                                     f", or an index 0..{len(self.task_names) - 1})")
        return codes

    def _status_codes(self, values) -> list[int]:
        codes = []
        for v in values:
            v = str(v).strip()
            if v == "finished":
                codes += [c for c in STATUS_NAMES if c != STATUS_PENDING]
            elif v in STATUS_CODES:
                codes.append(STATUS_CODES[v])
            elif v.isdigit() and int(v) in STATUS_NAMES:
                codes.append(int(v))
            else:
                raise SelectionError(f"unknown status {v!r} (known: "
                                     f"{', '.join(STATUS_CODES)}, finished, or a code 0..3)")
        return codes

    # ---- summary ------------------------------------------------------------------------

    def summary(self) -> list[TaskSummary]:
        """One row per task: counts per status, epochs of converged nets, mean accuracy."""
        return [
            TaskSummary(task=r["name"], finished=r["n"], total=r["total"],
                        converged=r["converged"], capped=r["capped"], diverged=r["diverged"],
                        median_epochs=r["median_epochs"], p90_epochs=r["p90_epochs"],
                        mean_val_accuracy=r["mean_val_accuracy"],
                        mean_criterion_accuracy=r["mean_criterion_accuracy"],
                        mean_sequences_right=r["mean_sequences_right"])
            for r in self.store.summary()
        ]


# DS3: automata grouped by their number of states (tasks.automata.STATE_RANGE, 16 to 48).
STATE_BINS = ((16, 23), (24, 31), (32, 39), (40, 48))


def size_bin_summary(ds: "Dataset") -> list[dict]:
    """DS3: per automaton-size bin (states lo-hi): automata, finished and converged nets,
    the converged share and the median epochs of the converged nets."""
    states = np.array([a.n_states for a in ds.automata()])
    status = np.asarray(ds.store.read_array("status"))
    epochs = np.asarray(ds.store.read_array("epochs"))
    n_states = states[ds.tasks()]
    rows = []
    for lo, hi in STATE_BINS:
        mine = (n_states >= lo) & (n_states <= hi)
        finished, conv = mine & (status > 0), mine & (status == 1)
        rows.append(dict(states=f"{lo}-{hi}", automata=int(((states >= lo) & (states <= hi)).sum()),
                         finished=int(finished.sum()), converged=int(conv.sum()),
                         share=conv.sum() / finished.sum() if finished.any() else math.nan,
                         median_epochs=float(np.median(epochs[conv])) if conv.any() else math.nan))
    return rows


def _weights_layout(path: Path):
    """Identity of the weights arrays' metadata files (inode, mtime), which `mlds pack`
    replaces; None while a swap is half done. A release archive never changes: ()."""
    if path.is_file():
        return ()
    try:
        return tuple((st.st_ino, st.st_mtime_ns) for st in
                     (os.stat(path / name / "zarr.json") for name in WEIGHT_ARRAYS))
    except FileNotFoundError:
        return None


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]


def open_dataset(path: str | Path) -> Dataset:
    """Open a dataset store read-only, lazily (nothing but metadata is read here): a store
    directory, or a release archive ``NAME.zarr.zip`` (``mlds release``), read in place."""
    return Dataset(path)
