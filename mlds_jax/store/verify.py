"""Integrity check of a store: re-read every chunk, compare checksums, check the rows agree.

What is checked (``mlds verify PATH``; one line per problem, a summary line, exit 1 if any):

- every chunk of every array but the weights is read through zarr, whose ``crc32c`` codec
  compares the checksum written with the chunk; a mismatch or undecodable chunk is reported
  with the rows it holds;
- every finished row of ``weights`` and ``initial_weights`` is compared with the crc32c
  recorded for it when it was written (``checksums/rows``); chunk files of the wrong size
  are reported too;
- finished rows: final weights of converged or capped nets and initial weights of any net
  are finite; the task is ``n mod K``; epochs are at least 1 and at most the cap, exactly the
  cap for a capped net; a converged net reached the threshold; a converged or capped net's
  loss curve is finite for its epochs and NaN after (when one value is logged per epoch);
- pending rows hold no data (a write interrupted before its status leaves some; rerunning
  ``mlds generate`` rewrites them).

Stores made before checksums existed are checked for everything else, and the summary says
how many rows and arrays had no checksum to compare.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from zarr.codecs import Crc32cCodec

from mlds_jax.store.checkpoint import ORBAX_TMP
from mlds_jax.store.dataset_store import DatasetStore
from mlds_jax.store.disk import abandoned_creating_dirs
from mlds_jax.store.rawrows import RawRows
from mlds_jax.store.schema import (
    EXTRA_ENTRIES,
    NO_CHECKSUM,
    ROW_CHECKSUMS,
    STATUS_CAPPED,
    STATUS_CONVERGED,
    STATUS_DIVERGED,
    STATUS_NAMES,
    STATUS_PENDING,
    WEIGHT_ARRAYS,
    DamagedStoreError,
    row_crc32c,
)

_SMALL = ("task", "seed", "epochs", "loss_curve", "val_accuracy", "hyperparameters", "seq_steps",
          "status")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong: which rows, and a one-line message that names them. ``kind``:
    "row" (a finished row's data), "unreadable" (chunk ``chunk`` of ``array``), "leftover"
    (a pending row holding data from an interrupted write: harmless, rewritten when it is
    trained), "shape" (arrays disagree with each other or the attrs)."""

    rows: tuple[int, ...]
    message: str
    kind: str = "row"
    array: str | None = None
    chunk: int | None = None

    def __str__(self) -> str:
        return self.message


@dataclasses.dataclass
class Report:
    path: Path
    n_nets: int = 0
    finished: int = 0
    chunks_read: int = 0
    rows_checksummed: int = 0
    rows_without_checksum: int = 0
    arrays_without_checksum: list[str] = dataclasses.field(default_factory=list)
    problems: list[Problem] = dataclasses.field(default_factory=list)
    strays: list[str] = dataclasses.field(default_factory=list)  # files no store needs

    @property
    def ok(self) -> bool:
        return not self.problems

    def damaged_rows(self) -> list[int]:
        """Ascending ids of rows that must be trained again (every kind but "leftover")."""
        return sorted({r for p in self.problems if p.kind != "leftover" for r in p.rows})

    def unreadable_chunks(self, arrays=None) -> list[tuple[str, int]]:
        """(array, chunk index) of every chunk that could not be read (of ``arrays`` only)."""
        return sorted({(p.array, p.chunk) for p in self.problems if p.kind == "unreadable"
                       and (arrays is None or p.array in arrays)})

    def first_problem(self, rows) -> str:
        rows = set(rows)
        return next((p.message for p in self.problems if rows & set(p.rows)), "")

    @property
    def bad_rows(self) -> list[int]:
        """Ascending ids of every net some problem names."""
        return sorted({r for p in self.problems for r in p.rows})

    def summary(self) -> str:
        unchecked = []
        if self.rows_without_checksum:
            unchecked.append(f"{self.rows_without_checksum} finished rows have no recorded "
                             f"weights checksum")
        if self.arrays_without_checksum:
            unchecked.append(f"no chunk checksums in {', '.join(self.arrays_without_checksum)}")
        if self.strays:
            unchecked.append(f"{len(self.strays)} stray files, removed by the next "
                             f"`mlds generate`")
        note = f" ({'; '.join(unchecked)})" if unchecked else ""
        head = (f"{self.path}: {self.n_nets} nets, {self.finished} finished; read "
                f"{self.chunks_read} chunks, compared {self.rows_checksummed} row checksums"
                f"{note}")
        if self.ok:
            return f"OK {head}"
        return (f"FAILED {head}: {len(self.problems)} problems in "
                f"{len(self.bad_rows)} nets")


def _rows_text(lo: int, hi: int) -> str:
    return f"net {lo}" if hi - lo == 1 else f"nets {lo}..{hi - 1}"


def _why(e: Exception) -> str:
    text = str(e).strip().splitlines()
    if "checksum" in (text[0] if text else "").lower():
        return "checksum mismatch"
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def verify(path, *, progress: Callable[[int], None] | None = None) -> Report:
    """Check the store at ``path`` (see the module docstring). ``progress(chunks)`` is
    called after each chunk row is done. StoreError if it cannot be opened at all."""
    store = DatasetStore.open(path, mode="r")
    n = store.n_nets
    report = Report(path=store.path, n_nets=n,
                    strays=[] if store.archive else strays(store.path))
    problems = report.problems
    problems.extend(_shapes(store))
    unreadable = np.zeros(n, bool)
    data: dict[str, np.ndarray] = {}

    # -- every small array, chunk by chunk, through zarr (crc32c checked on decode) --------
    for name in _SMALL:
        a = store.array(name)
        if not any(isinstance(c, Crc32cCodec) for c in a.metadata.codecs):
            report.arrays_without_checksum.append(name)
        fill = np.nan if a.dtype.kind == "f" else 0
        out = np.full((n, *a.shape[1:]), fill, a.dtype)
        rows = a.chunks[0]
        for lo in range(0, n, rows):
            hi = min(lo + rows, n)
            try:
                out[lo:hi] = a[lo:hi]
            except Exception as e:  # noqa: BLE001 - any decode failure is a finding
                problems.append(Problem(tuple(range(lo, hi)), f"{name}: {_rows_text(lo, hi)} "
                                        f"(chunk {lo // rows}) unreadable: {_why(e)}",
                                        "unreadable", name, lo // rows))
                unreadable[lo:hi] = True
            report.chunks_read += 1
        data[name] = out

    status = data["status"]
    finished = (status != STATUS_PENDING) & ~unreadable
    report.finished = int((status != STATUS_PENDING).sum())
    crcs = None
    if store.checksum_rows is not None:
        a = store.array(ROW_CHECKSUMS)
        crcs = np.full((n, 2), NO_CHECKSUM, np.int64)
        rows = a.chunks[0]
        for lo in range(0, n, rows):
            hi = min(lo + rows, n)
            try:
                crcs[lo:hi] = a[lo:hi]
            except Exception as e:  # noqa: BLE001
                problems.append(Problem(tuple(range(lo, hi)), f"{ROW_CHECKSUMS}: "
                                        f"{_rows_text(lo, hi)} (chunk {lo // rows}) "
                                        f"unreadable: {_why(e)}", "unreadable", ROW_CHECKSUMS,
                                        lo // rows))

    # -- weights: raw chunks, per-row checksums, finite values -----------------------------
    has_data = np.zeros(n, bool)  # pending rows that hold weights
    for col, name in enumerate(WEIGHT_ARRAYS):  # the columns of the row checksums
        try:
            raw = RawRows.of(store, name)
        except DamagedStoreError as e:
            problems.append(Problem(tuple(range(n)), f"{name}: {e}"))
            continue
        a = store.array(name)
        rows = a.chunks[0]
        for lo in range(0, n, rows):
            hi = min(lo + rows, n)
            ids = np.arange(lo, hi)
            try:
                block = raw.read_chunk(lo // rows) if raw is not None else np.asarray(a[lo:hi])
            except Exception as e:  # noqa: BLE001
                problems.append(Problem(tuple(ids), f"{name}: {_rows_text(lo, hi)} (chunk "
                                        f"{lo // rows}) unreadable: {_why(e)}", "unreadable",
                                        name, lo // rows))
                report.chunks_read += 1
                continue
            report.chunks_read += 1
            if progress:
                progress(report.chunks_read)
            if block is None:  # never written: reads as NaN; nothing stored to compare
                block = np.full((hi - lo, store.n_params), np.nan, np.float32)
                stored = False
            else:
                stored = True
            done = finished[lo:hi]
            if stored and crcs is not None:
                want = crcs[lo:hi, col]
                check = done & (want != NO_CHECKSUM)
                if check.any():
                    got = row_crc32c(block[check])
                    report.rows_checksummed += int(check.sum())
                    for i in ids[check][got != want[check]]:
                        problems.append(Problem((int(i),), f"{name}: {_rows_text(i, i + 1)} "
                                                f"does not match the checksum recorded when "
                                                f"it was written"))
                if col == 0:
                    report.rows_without_checksum += int((done & (want == NO_CHECKSUM)).sum())
            elif col == 0 and crcs is None:
                report.rows_without_checksum += int(done.sum())
            finite = np.isfinite(block).all(axis=1)
            must_be_finite = done & (status[lo:hi] != STATUS_DIVERGED) if col == 0 else done
            for i in ids[must_be_finite & ~finite]:
                problems.append(Problem((int(i),), f"{name}: {_rows_text(i, i + 1)} "
                                        f"({STATUS_NAMES.get(int(status[i]), '?')}) has "
                                        f"non-finite values"))
            has_data[lo:hi] |= ~np.isnan(block).all(axis=1)

    problems.extend(_consistency(store, data, finished, unreadable, has_data))
    problems.sort(key=lambda p: (min(p.rows, default=-1), p.message))
    return report


def _shapes(store: DatasetStore) -> list[Problem]:
    """Every array has N rows and the same chunking along N; widths match the attrs."""
    arrays = {name: store.array(name) for name in WEIGHT_ARRAYS + _SMALL}
    n = store.n_nets
    out = []
    longer = {}
    for name, a in arrays.items():
        if a.shape[0] != n:
            longer.setdefault(a.shape[0], []).append(name)
    if store.checksum_rows not in (None, n):
        longer.setdefault(store.checksum_rows, []).append(ROW_CHECKSUMS)
    for rows, names in sorted(longer.items()):
        out.append(Problem((), f"status has {n} rows but {', '.join(names)} "
                               f"{'has' if len(names) == 1 else 'have'} {rows}: an extension "
                               f"stopped part-way (rerun `mlds generate` with the larger "
                               f"--per-task) or a damaged zarr.json", "shape"))
    chunking = {name: a.chunks[0] for name, a in arrays.items()}
    if len(set(chunking.values())) > 1:
        out.append(Problem((), f"arrays are chunked differently along the nets: {chunking}",
                           "shape"))
    want = {"weights": sum(math.prod(spec["shape"]) for spec in store.attrs["layout"]),
            "loss_curve": largest_cap(store.attrs["config"])}
    want["initial_weights"] = want["weights"]
    for name, width in want.items():
        if width is not None and arrays[name].shape[1] != width:
            out.append(Problem((), f"{name} has {arrays[name].shape[1]} columns, the attrs say "
                                   f"{width}", "shape"))
    return out


def largest_cap(config: dict) -> int | None:
    """The largest epoch cap of a recorded config (recipe, per-task tables, sweep points):
    the width of the loss curve."""
    recipe = config.get("recipe", {})
    caps = [recipe.get("max_epochs")]
    caps += [t.get("max_epochs") for t in recipe.get("task", {}).values()]
    caps += [p.get("max_epochs") for p in config.get("sweep", [])]
    caps = [int(c) for c in caps if c is not None]
    return max(caps) if caps else None


def strays(path: Path) -> list[str]:
    """Files and folders at or beside the store that no store needs: temporary chunk files
    (``*.partial``), write probes, an interrupted (un)pack's copies of the weights, a dead
    creator's ``.NAME.creating-*``, an interrupted checkpoint's ``*.orbax-checkpoint-tmp*``,
    anything else at the top level."""
    path = Path(path)
    expected = {"zarr.json", *_SMALL, *WEIGHT_ARRAYS, *EXTRA_ENTRIES}
    found = [p for p in path.iterdir() if p.name not in expected]
    for root, dirs, files in os.walk(path):
        for name in files:
            if name.endswith(".partial") or name.startswith(".mlds-write-probe-"):
                found.append(Path(root) / name)
        leftovers = [name for name in dirs if ORBAX_TMP in name]  # an interrupted save
        found += [Path(root) / name for name in leftovers]
        dirs[:] = [name for name in dirs if name not in leftovers]
    found += abandoned_creating_dirs(path)
    return sorted(str(p) for p in found)


def _consistency(store: DatasetStore, data: dict, finished: np.ndarray,
                 unreadable: np.ndarray, has_weights: np.ndarray) -> list[Problem]:
    """Status, epochs, task, accuracy and loss curve of each row against each other."""
    recipe = store.attrs["config"].get("recipe", {})
    threshold = recipe.get("threshold")
    k = len(store.attrs["task_names"])
    n = store.n_nets
    status, epochs, task = data["status"], data["epochs"], data["task"]
    names = list(store.attrs["accuracy_names"])
    criterion = [names.index(c) for c in store.attrs["criterion_names"]]
    # What the threshold applies to: the lowest criterion column (e.g. the worst pin).
    acc = data["val_accuracy"][:, criterion].min(axis=1) if criterion else np.full(n, np.nan)
    curve = data["loss_curve"]
    ids = np.arange(n)
    hyper_names = list(store.attrs["hyperparameter_names"])
    cap = np.full(n, recipe.get("max_epochs", -1), np.int64)  # each net's own cap
    if "max_epochs" in hyper_names:
        own = data["hyperparameters"][:, hyper_names.index("max_epochs")]
        cap = np.where(np.isfinite(own), own, cap).astype(np.int64)
    width = largest_cap(store.attrs["config"])
    out: list[Problem] = []

    def each(mask, text):
        for i in ids[mask]:
            out.append(Problem((int(i),), f"{_rows_text(i, i + 1)}: {text(int(i))}"))

    name = lambda i: STATUS_NAMES.get(int(status[i]), str(status[i]))  # noqa: E731
    each(~np.isin(status, list(STATUS_NAMES)), lambda i: f"unknown status code {status[i]}")
    known = finished & np.isin(status, list(STATUS_NAMES))
    each(known & (epochs < 1), lambda i: f"{name(i)} but trained {epochs[i]} epochs")
    if k:
        each(known & (task != ids % k), lambda i: f"task {task[i]}, but net n trains task "
                                                  f"n mod {k} = {i % k}")
    if width is not None:
        each(known & (epochs > cap), lambda i: f"{name(i)} after {epochs[i]} epochs, past the "
                                               f"cap of {cap[i]}")
        each(known & (status == STATUS_CAPPED) & (epochs != cap) & (epochs >= 1),
             lambda i: f"capped after {epochs[i]} epochs, not at the cap of {cap[i]}")
    if threshold is not None:
        low = known & (status == STATUS_CONVERGED) & ~(acc >= threshold)
        what = names[criterion[0]] if len(criterion) == 1 else "criterion accuracy"
        each(low, lambda i: f"converged with {what} {acc[i]:.4f}, below the threshold "
                            f"{threshold}")
    if width is not None and curve.shape[1] == width:  # one logged loss per epoch
        trained = np.arange(width)[None, :] < epochs[:, None]  # (N, E)
        finite = np.isfinite(curve)
        bad = known & np.isin(status, (STATUS_CONVERGED, STATUS_CAPPED)) & (
            (trained & ~finite).any(axis=1) | (~trained & finite).any(axis=1))
        each(bad, lambda i: f"{name(i)} after {epochs[i]} epochs, but its loss curve has "
                            f"{int(finite[i].sum())} finite values")
    pending = (status == STATUS_PENDING) & ~unreadable
    stray = pending & (has_weights | (epochs != 0) | np.isfinite(acc)
                       | np.isfinite(curve).any(axis=1))
    for i in ids[stray]:
        out.append(Problem((int(i),), f"{_rows_text(i, i + 1)}: pending but holds data (a "
                                      f"write interrupted before its status; `mlds generate` "
                                      f"redoes it)", "leftover"))
    return out
