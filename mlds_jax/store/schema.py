"""The schema of a dataset store: its arrays and attrs, the store's errors, row checksums and
the codecs that let a weights chunk file be read as raw bytes.

One Zarr v3 group (a local directory; read-only inside a zip file made by ``mlds release``)
per dataset; row ``n`` of every array belongs to net ``n``. Arrays are chunked along the net
axis only (``chunk_rows`` rows, full width), so a reader can open the store lazily and slice
one net or one task without reading the rest:

    weights          (N, P) float32   final parameters, flat layout in attrs["layout"]
    initial_weights  (N, P) float32   parameters at initialisation
    task             (N,)   int32     task index, name in attrs["task_names"]
    seed             (N,)   uint64    seed the net was derived from
    status           (N,)   uint8     0 pending, 1 converged, 2 capped, 3 diverged
    epochs           (N,)   int32     epochs trained
    loss_curve       (N, E) float32   training loss per logged interval, NaN after the stop
    val_accuracy     (N, A) float32   final validation accuracies, names in attrs["accuracy_names"]
    hyperparameters  (N, H) float32   the net's per-net recipe values, names in
                                      attrs["hyperparameter_names"]
    seq_steps        (N,)   int64     sequence-steps trained (epochs x sequences x length)
    checksums/rows   (N, 2) int64     crc32c of each row of weights and initial_weights
                                      (its little-endian float32 bytes); -1: not recorded
    per_net/<name>   (N, ...)         optional per-net arrays a dataset declares at creation
                                      (attrs["per_net"]: name -> dtype, row shape; DS4: each
                                      net's trigger spec), same chunk grid, written with
                                      the row before ``status``

Float arrays are filled with NaN, integer arrays with 0. The two weights arrays are stored
uncompressed, so their chunk files hold the raw little-endian float32 rows, which
``mlds_jax.rawrows`` reads and memory-maps directly and ``mlds pack`` rewrites as one
[N, P] block (the layout and why the generator writes chunks: that module's docstring).
A packed store is for reading: writing or extending it raises until it is unpacked.


Integrity: every array but the two weights arrays carries zarr's ``crc32c`` codec, so its
checksum is in the same chunk file as its data, replaced atomically with it when a later
write rewrites the chunk. A trailing checksum in the weights chunks would end the raw float32
block with 4 foreign bytes; instead ``write_rows`` records one crc32c per row of each weights
array in ``checksums/rows`` (same chunk grid, so the same single writer per chunk), before
``status``: a row's checksum lands with its data and never goes stale, since rewriting a
chunk leaves the other rows' bytes and checksums unchanged. ``mlds verify`` checks both.

This module imports only numpy, zarr (with its google-crc32c) and the standard library.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

FORMAT_VERSION = 3

STATUS_PENDING, STATUS_CONVERGED, STATUS_CAPPED, STATUS_DIVERGED = 0, 1, 2, 3
STATUS_NAMES = {0: "pending", 1: "converged", 2: "capped", 3: "diverged"}

# name -> (dtype, width axis: None for (N,), else the DatasetStore attribute giving the width).
# Order matters: write_rows and extension go through it, and `status` must stay last.
_SCHEMA = {
    "weights": (np.float32, "n_params"),
    "initial_weights": (np.float32, "n_params"),
    "task": (np.int32, None),
    "seed": (np.uint64, None),
    "epochs": (np.int32, None),
    "loss_curve": (np.float32, "n_log"),
    "val_accuracy": (np.float32, "n_accuracies"),
    "hyperparameters": (np.float32, "n_hyper"),
    "seq_steps": (np.int64, None),
    "status": (np.uint8, None),
}
ARRAY_NAMES = tuple(_SCHEMA)  # every per-net array, status last
_DIM_NAMES = {"n_params": "param", "n_log": "log_step", "n_accuracies": "accuracy",
              "n_hyper": "hyperparameter"}
# Stored uncompressed (raw float32 chunk files, see mlds_jax.rawrows); also the columns of
# checksums/rows, in this order.
WEIGHT_ARRAYS = ("weights", "initial_weights")
ROW_CHECKSUMS = "checksums/rows"  # (N, 2) int64, columns WEIGHT_ARRAYS
NO_CHECKSUM = -1
# Left behind only by a rawrows.pack() killed between its two renames; see _checked_arrays.
_PACK_LEFTOVERS = {f".{n}.{s}" for n in WEIGHT_ARRAYS for s in ("new", "old")}
# What else may sit in a store directory: `mlds card` output, the checksums group, the
# writers' leases (mlds_jax.leases) and checkpoints (mlds_jax.checkpoint), `mlds analyze` output.
EXTRA_ENTRIES = {"checksums", "tables", "README.md", "figures", "leases", "checkpoints",
                 "analysis", "per_net"}
PER_NET = "per_net"  # group of a dataset's own per-net arrays (attrs["per_net"])
TABLES = "tables"  # group of fixed per-dataset arrays written at creation (DS3: the automata)
# attrs key of a widening of `hyperparameters` in progress (mlds_jax.store.upgrade).
WIDENING = "widening_hyperparameters"

REQUIRED_ATTRS = (
    "format_version", "dataset", "config", "task_names", "layout", "package_version",
    "accuracy_names", "criterion_names", "hyperparameter_names",
)


class StoreError(Exception):
    """One-line message naming the problem; the CLI prints it and exits non-zero."""


class ConfigMismatchError(StoreError):
    """The store on disk was made with another dataset, config or shape than this run."""


class DamagedStoreError(StoreError):
    """Something is at the path that claims to be a store but is incomplete or unreadable."""


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _read_error(path: Path, what: str, e: Exception) -> StoreError:
    """A plain OS error (permissions, I/O) is a StoreError; anything zarr or JSON raises
    about the metadata's content means the store is damaged."""
    if isinstance(e, OSError) and not isinstance(e, zarr.errors.BaseZarrError):
        return StoreError(f"cannot read store at {path}: {e.strerror or e}")
    return DamagedStoreError(f"store at {path} is damaged: unreadable {what} ({_one_line(e)})")


def _resolved_attrs(attrs: dict, n_accuracies: int, n_hyper: int) -> dict:
    """attrs with format_version set, round-tripped through JSON so that they compare equal
    to what a reopened store reads back (tuples become lists)."""
    attrs = {**attrs, "format_version": FORMAT_VERSION}
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise ValueError(f"store attrs lack {', '.join(missing)}")
    if len(attrs["accuracy_names"]) != n_accuracies:
        raise ValueError(f"accuracy_names has {len(attrs['accuracy_names'])} names, "
                         f"n_accuracies={n_accuracies}")
    if len(attrs["hyperparameter_names"]) != n_hyper:
        raise ValueError(f"hyperparameter_names has {len(attrs['hyperparameter_names'])} "
                         f"names, n_hyper={n_hyper}")
    if not set(attrs["criterion_names"]) <= set(attrs["accuracy_names"]):
        raise ValueError("criterion_names must be among accuracy_names")
    try:
        return json.loads(json.dumps(attrs, allow_nan=True))
    except TypeError as e:
        raise ValueError(f"store attrs are not JSON-able: {e}") from e


def _first_difference(old, new, key: str = ""):
    """(dotted key, old, new) of the first difference between two JSON trees, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(old) + [k for k in new if k not in old]:
            sub = f"{key}.{k}" if key else str(k)
            if k not in old or k not in new:
                return sub, old.get(k, "<absent>"), new.get(k, "<absent>")
            diff = _first_difference(old[k], new[k], sub)
            if diff is not None:
                return diff
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            diff = _first_difference(a, b, f"{key}[{i}]")
            if diff is not None:
                return diff
        return None
    same = old == new or (isinstance(old, float) and isinstance(new, float)
                          and np.isnan(old) and np.isnan(new))
    return None if same else (key or "config", old, new)


# ---- checksums ----------------------------------------------------------------------------

# Every array but the raw weights: zstd as before, then a crc32c of the compressed chunk.
_CHECKSUMMED = (ZstdCodec(level=0, checksum=False), Crc32cCodec())


def row_bytes(*, n_params: int, n_log: int, n_accuracies: int, n_hyper: int) -> int:
    """Disk one finished row takes at most: the raw weights, their checksums, and the other
    arrays before compression."""
    widths = dict(n_params=n_params, n_log=n_log, n_accuracies=n_accuracies, n_hyper=n_hyper)
    return 2 * 8 + sum(np.dtype(dtype).itemsize * (1 if width is None else widths[width])
                       for dtype, width in _SCHEMA.values())


def row_crc32c(rows: np.ndarray) -> np.ndarray:
    """(R,) int64: crc32c of each row's little-endian float32 bytes; rows (R, P)."""
    rows = np.ascontiguousarray(rows, dtype="<f4")
    return np.array([google_crc32c.value(r.tobytes()) for r in rows], np.int64)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, then rename it to ``path``: never torn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _create_row_checksums(group: zarr.Group, n_nets: int, chunk_rows: int) -> zarr.Array:
    sub = group.require_group("checksums")
    return sub.create_array(
        "rows", shape=(n_nets, 2), dtype=np.int64, chunks=(chunk_rows, 2),
        fill_value=NO_CHECKSUM, compressors=None, dimension_names=("net", "array"),
        attributes={"columns": list(WEIGHT_ARRAYS), "algorithm": "crc32c",
                    "of": "the row's little-endian float32 bytes", "missing": NO_CHECKSUM},
    )


def _checked_row_checksums(path: Path, group: zarr.Group, n: int) -> zarr.Array | None:
    """``checksums/rows``, or None in a store made before it existed."""
    try:
        a = group[ROW_CHECKSUMS]
    except KeyError:
        return None
    except Exception as e:
        raise _read_error(path, f"{ROW_CHECKSUMS}/zarr.json", e) from e
    ok = (isinstance(a, zarr.Array) and a.dtype == np.int64 and a.ndim == 2 and a.shape[1] == 2
          and a.shards is None and len(a.metadata.codecs) == 1
          and is_raw_le(a.metadata.codecs[0]) and has_default_keys(a))
    if not ok:
        raise DamagedStoreError(f"store at {path} is damaged: {ROW_CHECKSUMS!r} is not an "
                                f"uncompressed (N, 2) int64 array")
    if a.shape[0] < n:
        raise DamagedStoreError(f"store at {path} is damaged: {ROW_CHECKSUMS!r} has "
                                f"{a.shape[0]} rows, status {n}")
    return a


# ---- codecs and keys: what lets a chunk file be read as raw bytes --------------------------


def is_raw_le(codec) -> bool:
    """The codec stores the array's bytes as they are, little-endian."""
    return isinstance(codec, BytesCodec) and getattr(codec.endian, "value", None) == "little"


def has_default_keys(a: zarr.Array) -> bool:
    """Chunk ``i`` of a 2-D array ``a`` is the file ``c/<i>/0`` under the array's directory."""
    cke = a.metadata.chunk_key_encoding
    return cke.name == "default" and getattr(cke, "separator", "/") == "/"


def is_packed(a: zarr.Array) -> bool:
    """``a`` is stored as shards (``mlds pack``), not as chunk files."""
    return a.shards is not None
