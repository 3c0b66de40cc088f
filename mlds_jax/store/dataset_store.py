"""The Zarr v3 store of one dataset: its schema; create, open, extend; resume state; rows
written with ``status`` last, row checksums, reads, a summary.

One Zarr v3 group (a local directory; read-only inside a zip file made by ``mlds release``)
per dataset; row ``n`` of every array belongs to net ``n``.

The arrays, attrs and checksums are described in ``mlds_jax.store.schema``; creating the
directory and checking what is opened, in ``mlds_jax.store.disk``.

Write-ordering contract (what makes resuming safe):
- A row counts as done only once its ``status`` is non-zero, and ``write_rows`` writes
  ``status`` after every other array. A run killed at any point therefore leaves rows that
  are either finished with all their data or still pending; rerunning trains the pending
  ones again (``pending()``), reading that state from the store itself, not a side file.
- Zarr's LocalStore (zarr 3.1) writes each chunk file to a temporary name and renames it
  into place, so a SIGKILL never leaves a torn chunk (at worst a stray ``*.partial`` file).
  The row checksums' chunks are written the same way.
- Writing part of a chunk reads, modifies and rewrites the whole chunk: correct as long as
  each chunk of rows has one writer at a time (the rule for filling one store from several
  processes: hand out id ranges aligned to ``chunk_rows``).
- Extending a store resizes ``status`` last, and a fresh store is built in a temporary
  sibling directory and renamed into place, so neither leaves a store that looks complete
  but is not.

This module imports only numpy, zarr and the standard library.
"""

from __future__ import annotations

import shutil
import uuid
import zipfile
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore, ZipStore

from mlds_jax.store import upgrade
from mlds_jax.store.disk import (
    abandoned_creating_dirs,
    _checked_arrays,
    _checked_per_net,
    _create,
    _delete_store_dir,
    _finish_interrupted_swap,
)
from mlds_jax.store.schema import (
    _checked_row_checksums,
    ConfigMismatchError,
    _create_row_checksums,
    DamagedStoreError,
    _first_difference,
    is_packed,
    NO_CHECKSUM,
    _one_line,
    PER_NET,
    _read_error,
    _resolved_attrs,
    ROW_CHECKSUMS,
    row_crc32c,
    _SCHEMA,
    STATUS_CAPPED,
    STATUS_CONVERGED,
    STATUS_DIVERGED,
    STATUS_PENDING,
    StoreError,
    TABLES,
    WEIGHT_ARRAYS,
    write_atomic,
)


class DatasetStore:
    """One dataset's Zarr group. Attributes: ``path``, ``attrs`` (dict), ``n_nets`` (N),
    ``n_params`` (P), ``n_log`` (E), ``n_accuracies`` (A), ``n_hyper`` (H). N is read
    once at open; another process extending the store later is not seen by this object."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = path
        self._group = group
        self.attrs = dict(group.attrs)
        self._arrays = _checked_arrays(path, group, self.attrs)
        self._row_crc = _checked_row_checksums(path, group, self._arrays["status"].shape[0])
        self._per_net = _checked_per_net(path, group, self.attrs)
        self.n_nets = self._arrays["status"].shape[0]
        self.n_params = self._arrays["weights"].shape[1]
        self.n_log = self._arrays["loss_curve"].shape[1]
        self.n_accuracies = self._arrays["val_accuracy"].shape[1]
        self.n_hyper = self._arrays["hyperparameters"].shape[1]

    # ---- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, path, mode: str = "r") -> "DatasetStore":
        """Open an existing store, ``mode`` "r" (read only) or "r+" (read and write).

        StoreError if nothing is there or it is not a store; DamagedStoreError if arrays or
        attrs are missing, shapes disagree, or a zarr.json is unreadable."""
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', not {mode!r}")
        path = Path(path)
        if path.is_file() and zipfile.is_zipfile(path):
            return cls._open_archive(path, mode)
        if path.is_file():
            raise StoreError(f"{path} is a file, not a dataset store")
        if not path.is_dir() or not any(path.iterdir()):
            raise StoreError(f"no dataset store at {path}")
        if not (path / "zarr.json").is_file():
            raise StoreError(f"{path} is not a dataset store (no zarr.json)")
        if mode == "r+":
            _finish_interrupted_swap(path)
        try:
            group = zarr.open_group(LocalStore(path, read_only=mode == "r"), mode=mode,
                                    zarr_format=3)
        except Exception as e:
            raise _read_error(path, "zarr.json", e) from e
        return cls(path, group)

    @classmethod
    def _open_archive(cls, path: Path, mode: str) -> "DatasetStore":
        """A store inside a zip file (``mlds release``), read in place through ZipStore."""
        if mode != "r":
            raise StoreError(f"{path} is a release archive, read-only; to write to it, unpack "
                             f"it first: `mlds release --unpack {path} --out DIR`")
        try:
            group = zarr.open_group(ZipStore(path, mode="r"), mode="r", zarr_format=3)
        except Exception as e:
            raise _read_error(path, "zarr.json", e) from e
        return cls(path, group)

    @property
    def archive(self) -> bool:
        """The store lies inside a zip file (read-only; no raw chunk files to map)."""
        return self.path.is_file()

    def read_extra(self, name: str) -> bytes | None:
        """The file ``name`` stored beside the arrays (``README.md``,
        ``analysis/splits.json``), from the directory or the archive; None if absent."""
        if not self.archive:
            path = self.path / name
            return path.read_bytes() if path.is_file() else None
        with zipfile.ZipFile(self.path) as zf:
            try:
                return zf.read(name)
            except KeyError:
                return None

    @classmethod
    def open_or_create(cls, path, *, n_nets: int, n_params: int, n_log: int,
                       n_accuracies: int, n_hyper: int, attrs: dict, chunk_rows: int = 64,
                       overwrite: bool = False,
                       tables: dict[str, np.ndarray] | None = None,
                       per_net: dict[str, tuple] | None = None,
                       absent: dict | None = None,
                       absent_columns: dict[str, float] | None = None) -> "DatasetStore":
        """Open the store at ``path`` for writing, creating it with N = ``n_nets`` if absent.

        ``absent``, ``absent_columns``: config keys (dotted) and ``hyperparameters`` columns
        that a store written by an older version may lack, each with the value its absence
        stands for: such a store is brought up to date (`mlds_jax.store.upgrade`) when that
        is its only difference.

        ``tables``: fixed arrays that describe the whole dataset (DS3: the automata), written
        once at creation under ``tables/``; they derive from the config, which is compared.
        ``per_net``: name -> (dtype, row shape) of extra per-net arrays under ``per_net/``
        (recorded in attrs["per_net"], so compared like the config).

        ``attrs`` must hold ``dataset``, ``config`` (JSON-able, the full resolved config),
        ``task_names``, ``layout``, ``accuracy_names`` (A names), ``criterion_names`` (the
        accuracy columns that define "converged"), ``hyperparameter_names`` (H names) and
        ``package_version`` (the writer's ``mlds_jax.__version__``); ``format_version`` is
        set here. An existing store must be intact and made with the same dataset, config
        and P, E, A, H
        (ConfigMismatchError naming the first differing key otherwise); if ``n_nets`` > N,
        every array is extended along N with the new rows pending. Never shrinks.
        ``overwrite`` deletes an existing store (or empty directory) first; it refuses to
        delete anything that does not look like a dataset store."""
        path = Path(path)
        if per_net:
            attrs = {**attrs, PER_NET: {k: {"dtype": np.dtype(d).str, "shape": list(shape)}
                                        for k, (d, shape) in per_net.items()}}
        attrs = _resolved_attrs(attrs, n_accuracies, n_hyper)
        for leftover in abandoned_creating_dirs(path):
            shutil.rmtree(leftover, ignore_errors=True)
        if overwrite and path.exists():
            _delete_store_dir(path)
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            try:
                _create(path, n_nets=n_nets, widths=dict(
                    n_params=n_params, n_log=n_log, n_accuracies=n_accuracies,
                    n_hyper=n_hyper),
                    attrs=attrs, chunk_rows=chunk_rows, tables=tables or {})
            except OSError as e:
                if not (path / "zarr.json").is_file():  # else another process created it
                    raise StoreError(f"cannot create store at {path}: {e.strerror or e}") from e
        store = cls.open(path, mode="r+")
        if store.attrs["dataset"] == attrs["dataset"] and upgrade.adopt_added_values(
                store, attrs, absent or {}, absent_columns or {}):
            store = cls.open(path, mode="r+")
        store._check_same_run(attrs, absent or {}, n_params=n_params, n_log=n_log,
                              n_accuracies=n_accuracies, n_hyper=n_hyper)
        store._ensure_row_checksums()
        store._extend(n_nets)
        return store

    def _check_same_run(self, attrs: dict, absent: dict, **widths: int) -> None:
        where = f"store at {self.path}"
        fix = "use --overwrite to replace it or another --out"
        if self.attrs["dataset"] != attrs["dataset"]:
            raise ConfigMismatchError(f"{where} holds dataset {self.attrs['dataset']!r}, "
                                      f"this run makes {attrs['dataset']!r}; {fix}")
        diff = _first_difference(self.attrs["config"],
                                 upgrade.comparable(self.attrs["config"], attrs["config"], absent))
        if diff is not None:
            key, old, new = diff
            raise ConfigMismatchError(f"{where} was made with {key}={old}, this run has {new}; "
                                      f"{fix}")
        for name, want in widths.items():
            if getattr(self, name) != want:
                raise ConfigMismatchError(f"{where} has {name}={getattr(self, name)}, this run "
                                          f"has {want}; {fix}")

    def _ensure_row_checksums(self) -> None:
        """Give a store made before row checksums existed its ``checksums/rows`` array (rows
        already finished stay "not recorded")."""
        if self._row_crc is not None:
            return
        weights = self._arrays["weights"]
        try:
            self._row_crc = _create_row_checksums(self._group, self._arrays["status"].shape[0],
                                                  weights.chunks[0])
        except OSError as e:
            raise StoreError(f"cannot add checksums to store at {self.path}: "
                             f"{e.strerror or e}") from e

    def _extend(self, n_nets: int) -> None:
        # Also completes an extension a killed run left half done (status is resized last,
        # so other arrays may be longer than status, never shorter).
        arrays = [self._row_crc] if self._row_crc is not None else []
        arrays += list(self._per_net.values())
        arrays += list(self._arrays.values())  # status last
        target = max(n_nets, *(a.shape[0] for a in arrays))
        if target > self.n_nets:
            self._refuse_if_packed("extend")
        try:
            for a in arrays:
                if a.shape[0] != target:
                    a.resize((target, *a.shape[1:]))
        except OSError as e:
            raise StoreError(f"cannot extend store at {self.path}: {e.strerror or e}") from e
        self.n_nets = target

    # ---- rows ---------------------------------------------------------------------------

    def array(self, name: str) -> zarr.Array:
        """The lazy zarr array ``name`` (one of the schema's names, or ``checksums/rows``)."""
        if name == ROW_CHECKSUMS and self._row_crc is not None:
            return self._row_crc
        return self._arrays[name]

    def tables(self) -> dict[str, np.ndarray]:
        """The fixed per-dataset arrays written at creation (empty for DS1 and DS2)."""
        try:
            group = self._group[TABLES]
        except KeyError:
            return {}
        try:
            return {name: np.asarray(a[...]) for name, a in group.arrays()}
        except Exception as e:
            raise _read_error(self.path, f"{TABLES}/", e) from e

    def row_checksums(self) -> np.ndarray | None:
        """(N, 2) int64: crc32c of each row's little-endian float32 bytes in ``weights`` and
        ``initial_weights``, -1 where none was recorded; None for a store made before row
        checksums existed (opened read-only)."""
        if self._row_crc is None:
            return None
        return self._row_crc[: self.n_nets]

    @property
    def checksum_rows(self) -> int | None:
        """Rows of ``checksums/rows`` (None if the store has none): N unless damaged."""
        return None if self._row_crc is None else self._row_crc.shape[0]

    @property
    def packed(self) -> bool:
        """True once ``mlds pack`` made the weights arrays one shard each (read-only layout)."""
        return any(is_packed(self._arrays[n]) for n in WEIGHT_ARRAYS)

    def _refuse_if_packed(self, what: str) -> None:
        if self.packed:
            raise StoreError(f"store at {self.path} is packed for reading; run "
                             f"`mlds pack --unpack {self.path}` before you {what} it")

    def pending(self, n_nets: int | None = None) -> np.ndarray:
        """(R,) int64: ascending ids in [0, n_nets or N) whose status is 0, read from the
        store's own status array (so several processes filling one store agree)."""
        n = self.n_nets if n_nets is None else n_nets
        if not 0 <= n <= self.n_nets:
            raise ValueError(f"n_nets={n} outside the store's 0..{self.n_nets} rows")
        status = self.read_array("status", n)
        return np.flatnonzero(status == STATUS_PENDING).astype(np.int64)

    def read_rows_of(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of array ``name`` (one chunk's worth: no damage report)."""
        return np.asarray(self._arrays[name][start:stop])

    def write_rows(self, ids, *, weights, initial_weights, task, seed, status, epochs,
                   loss_curve, val_accuracy, hyperparameters, seq_steps,
                   per_net: dict[str, np.ndarray] | None = None) -> None:
        """Write finished rows ``ids`` (R,) (any order, unique, in [0, N)).

        weights, initial_weights (R, P); task, seed, status, epochs, seq_steps (R,);
        loss_curve (R, E); val_accuracy (R, A); hyperparameters (R, H); per_net: every
        array the store declares, (R, *row shape). status must be 1, 2 or 3. Every other
        array is written before ``status``; each array costs one write per touched chunk
        (orthogonal indexing)."""
        values = dict(weights=weights, initial_weights=initial_weights, task=task, seed=seed,
                      status=status, epochs=epochs, loss_curve=loss_curve,
                      val_accuracy=val_accuracy, hyperparameters=hyperparameters,
                      seq_steps=seq_steps)
        ids = self._checked_ids(ids)
        for name, (dtype, width) in _SCHEMA.items():
            shape = (len(ids),) if width is None else (len(ids), getattr(self, width))
            values[name] = np.asarray(values[name])
            if values[name].shape != shape:
                raise ValueError(f"{name} has shape {values[name].shape}, expected {shape}")
            values[name] = values[name].astype(dtype, copy=False)
        extra = {}
        per_net = per_net or {}
        if set(per_net) != set(self._per_net):
            raise ValueError(f"per_net arrays {sorted(per_net)}, the store has "
                             f"{sorted(self._per_net)}")
        for name, a in self._per_net.items():
            extra[name] = np.asarray(per_net[name])
            if extra[name].shape != (len(ids), *a.shape[1:]):
                raise ValueError(f"per_net {name} has shape {extra[name].shape}, expected "
                                 f"{(len(ids), *a.shape[1:])}")
            extra[name] = extra[name].astype(a.dtype, copy=False)
        bad = ~np.isin(values["status"], (STATUS_CONVERGED, STATUS_CAPPED, STATUS_DIVERGED))
        if bad.any():
            raise ValueError(f"status must be 1, 2 or 3 for finished rows, got "
                             f"{values['status'][bad][0]} for net {ids[bad][0]}")
        if not ids.size:
            return
        self._refuse_if_packed("write to")
        self._ensure_row_checksums()
        crcs = np.stack([row_crc32c(values[n]) for n in WEIGHT_ARRAYS], axis=1)  # (R, 2)
        for name, a in self._per_net.items():
            a.oindex[ids] = extra[name]
        for name in _SCHEMA:  # status last: see the module docstring
            if name == "status":
                self._write_row_checksums(ids, crcs)
            self._arrays[name].oindex[ids] = values[name]

    def _write_row_checksums(self, ids: np.ndarray, crcs: np.ndarray) -> None:
        """Rows ``ids`` of ``checksums/rows``, one atomic rewrite per touched chunk.

        Written as raw chunk files (the array is uncompressed little-endian int64 with the
        default "c/<i>/0" keys, checked at open) rather than through zarr: the same bytes,
        the same temporary-name-and-rename as zarr's LocalStore, without its async machinery
        for a few hundred bytes."""
        rows = self._row_crc.chunks[0]
        for k in np.unique(ids // rows):
            mine = ids // rows == k
            path = self.path / ROW_CHECKSUMS / "c" / str(k) / "0"
            block = np.full((rows, 2), NO_CHECKSUM, "<i8")
            if path.exists():
                old = np.fromfile(path, "<i8")
                if old.size != block.size:
                    raise DamagedStoreError(f"store at {self.path} is damaged: {path} holds "
                                            f"{old.size * 8} bytes, not {block.size * 8}")
                block[:] = old.reshape(rows, 2)
            block[ids[mine] - k * rows] = crcs[mine]
            write_atomic(path, block.tobytes())

    def read_rows(self, ids) -> dict[str, np.ndarray]:
        """Rows ``ids`` (R,) of every array, in the order given: name -> (R, ...) array."""
        ids = self._checked_ids(ids, unique=False)
        rows = {name: a.oindex[ids] for name, a in self._arrays.items()}
        rows.update({f"{PER_NET}/{name}": a.oindex[ids] for name, a in self._per_net.items()})
        return rows

    def per_net_names(self) -> list[str]:
        """The dataset's own per-net arrays (``per_net/<name>``), in declaration order."""
        return list(self._per_net)

    def read_per_net(self, name: str, n: int | None = None) -> np.ndarray:
        """The first ``n`` (default N) rows of ``per_net/<name>``."""
        return np.asarray(self._per_net[name][: self.n_nets if n is None else n])

    def read_array(self, name: str, n: int | None = None) -> np.ndarray:
        """The first ``n`` (default N) rows of array ``name``, read chunk by chunk, so that a
        damaged chunk is named: DamagedStoreError with its rows, in one line."""
        a = self._arrays[name]
        n = self.n_nets if n is None else n
        out = np.empty((n, *a.shape[1:]), a.dtype)
        rows = a.chunks[0]
        for lo in range(0, n, rows):
            hi = min(lo + rows, n)
            try:
                out[lo:hi] = a[lo:hi]
            except Exception as e:  # noqa: BLE001 - any decode failure means damage here
                raise DamagedStoreError(
                    f"store at {self.path} is damaged: {name} of nets {lo}..{hi - 1} (chunk "
                    f"{lo // rows}) is unreadable ({_one_line(e)}); `mlds generate` with the "
                    f"same arguments retrains them, `mlds verify` lists every problem") from e
        return out

    def reset_rows(self, ids, unreadable_chunks=()) -> None:
        """Make rows ``ids`` pending again, so the generator trains them anew. Each
        ``(array name, chunk index)`` in ``unreadable_chunks`` is deleted first (its rows then
        read as the fill value), since a chunk that cannot be read cannot be rewritten."""
        ids = self._checked_ids(ids)
        for name, k in unreadable_chunks:
            a = self.array(name)
            key = "/".join(["c", str(k)] + ["0"] * (a.ndim - 1))
            try:
                (self.path / name / key).unlink(missing_ok=True)
            except OSError as e:
                raise StoreError(f"cannot repair store at {self.path}: {e.strerror or e}") from e
        if ids.size:
            self._refuse_if_packed("repair")
            self._arrays["status"].oindex[ids] = np.zeros(ids.size, np.uint8)

    def check_writable(self) -> None:
        """StoreError (one line) unless a file can be created in every directory a write
        touches: a read-only mount, permissions, or a full inode table are found here rather
        than after the first batch of nets has trained."""
        dirs = [self.path, self.path / "checksums" / "rows"]
        dirs += [self.path / name for name in _SCHEMA]
        dirs += [d / "c" for d in dirs[1:] if (d / "c").is_dir()]
        for d in dirs:
            if not d.is_dir():
                continue
            probe = d / f".mlds-write-probe-{uuid.uuid4().hex[:8]}"
            try:
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as e:
                raise StoreError(f"store at {self.path} is not writable: cannot create a file "
                                 f"in {d} ({e.strerror or e})") from e

    def _checked_ids(self, ids, unique: bool = True) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"ids must be a 1-D integer array, got shape {ids.shape} "
                             f"dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_nets):
            raise ValueError(f"ids must lie in [0, {self.n_nets}), got {ids.min()}..{ids.max()}")
        if unique and np.unique(ids).size != ids.size:
            raise ValueError("ids contain duplicates")
        return ids

    # ---- summary ------------------------------------------------------------------------

    def summary(self) -> list[dict]:
        """One dict per task index: task, name, total (rows of the task: net n belongs to task
        n mod K), n (finished rows), converged, capped, diverged, median_epochs and
        p90_epochs (over converged; NaN if none), and means over finished rows with a finite
        value (NaN if none) of: mean_val_accuracy (the first accuracy column),
        mean_criterion_accuracy (the lowest of the ``criterion_names`` columns: what the
        threshold applies to, e.g. the worst pin), mean_sequences_right (the lowest of the
        ``*_sequences_right`` columns)."""
        status = self.read_array("status")
        done = status != STATUS_PENDING
        task = self.read_array("task")[done]
        status, epochs = status[done], self.read_array("epochs")[done]
        all_acc = self.read_array("val_accuracy")[done]
        acc_names = list(self.attrs["accuracy_names"])

        def lowest(columns):
            idx = [acc_names.index(c) for c in columns if c in acc_names]
            return all_acc[:, idx].min(axis=1) if idx else np.full(task.shape, np.nan)

        acc = all_acc[:, 0] if self.n_accuracies else np.full(task.shape, np.nan, np.float32)
        criterion = lowest(self.attrs["criterion_names"])
        sequences = lowest([c for c in acc_names if c.endswith("_sequences_right")])
        names = list(self.attrs["task_names"])
        rows_of_task = np.arange(self.n_nets) % max(len(names), 1)
        rows = []
        for t in range(max(len(names), int(task.max(initial=-1)) + 1)):
            mine = task == t
            conv_epochs = epochs[mine & (status == STATUS_CONVERGED)]

            def mean(values):
                finite = values[mine & np.isfinite(values)]
                return float(finite.mean()) if finite.size else np.nan

            rows.append(dict(
                task=t, name=names[t] if t < len(names) else str(t),
                total=int((rows_of_task == t).sum()), n=int(mine.sum()),
                converged=int((status[mine] == STATUS_CONVERGED).sum()),
                capped=int((status[mine] == STATUS_CAPPED).sum()),
                diverged=int((status[mine] == STATUS_DIVERGED).sum()),
                median_epochs=float(np.median(conv_epochs)) if conv_epochs.size else np.nan,
                p90_epochs=float(np.percentile(conv_epochs, 90)) if conv_epochs.size else np.nan,
                mean_val_accuracy=mean(acc), mean_criterion_accuracy=mean(criterion),
                mean_sequences_right=mean(sequences),
            ))
        return rows


# ---- helpers ------------------------------------------------------------------------------
