"""A store's directory on disk: built in a temporary sibling and renamed into place, checked
when opened, and the leftovers of interrupted runs (creations, pack swaps) found and removed.

numpy, zarr and the standard library only.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from mlds_jax.store.schema import (
    _CHECKSUMMED,
    _create_row_checksums,
    DamagedStoreError,
    _DIM_NAMES,
    EXTRA_ENTRIES,
    FORMAT_VERSION,
    _PACK_LEFTOVERS,
    PER_NET,
    _read_error,
    REQUIRED_ATTRS,
    _SCHEMA,
    STATUS_NAMES,
    StoreError,
    TABLES,
    WEIGHT_ARRAYS,
    WIDENING,
)


def _finish_interrupted_swap(path: Path) -> None:
    """(Un)packing swaps a weights array with two renames: ``name`` -> ``.name.old``, then
    the checked ``.name.new`` -> ``name``, then deletes ``.name.old``. A run killed between
    the renames leaves no ``name``: finish the swap (or undo it when ``.name.new`` is gone).
    Killed later, or while building ``.name.new``, it leaves a copy of the weights that no
    one will use: delete it."""
    for name in WEIGHT_ARRAYS:
        old, new = path / f".{name}.old", path / f".{name}.new"
        if not (path / name).exists() and old.is_dir():
            os.rename(new if new.is_dir() else old, path / name)
        if (path / name).exists():
            for leftover in (old, new):
                shutil.rmtree(leftover, ignore_errors=True)


def creating_dir(path: Path) -> Path:
    """Where this process builds a new store before renaming it to ``path``: the name says
    which host and process, so that a later run can tell a dead creator's leftover."""
    return path.with_name(f".{path.name}.creating-{socket.gethostname()}-{os.getpid()}-"
                          f"{uuid.uuid4().hex[:8]}")


def abandoned_creating_dirs(path: Path) -> list[Path]:
    """Siblings of ``path`` left by a store creation whose process died (this host; other
    hosts' are left alone, as are any younger than an hour in the old unnamed form)."""
    found = []
    host = socket.gethostname()
    prefix = f".{path.name}.creating-"
    for p in path.parent.glob(f"{glob.escape(prefix)}*"):
        parts = p.name[len(prefix):].rsplit("-", 2)  # host, pid, random
        if len(parts) == 3 and parts[1].isdigit():
            if parts[0] == host and not _process_alive(int(parts[1])):
                found.append(p)
        else:
            try:
                if time.time() - p.stat().st_mtime > 3600:
                    found.append(p)
            except OSError:
                pass
    return found


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _looks_like_store(path: Path) -> bool:
    """A directory holding a zarr.json and nothing but our arrays (or zarr's temp files)."""
    entries = [p.name for p in path.iterdir()]
    return "zarr.json" in entries and all(
        n == "zarr.json" or n in _SCHEMA or n in EXTRA_ENTRIES or n in _PACK_LEFTOVERS
        or n.endswith(".partial") for n in entries)


def _delete_store_dir(path: Path) -> None:
    if path.is_file() or path.is_symlink():
        raise StoreError(f"{path} is a file, not a dataset store; refusing to delete it")
    if any(path.iterdir()) and not _looks_like_store(path):
        raise StoreError(f"{path} is a non-empty directory that is not a dataset store; "
                         f"refusing to delete it")
    try:
        shutil.rmtree(path)
    except OSError as e:
        raise StoreError(f"cannot delete store at {path}: {e.strerror or e}") from e


def _create(path: Path, *, n_nets: int, widths: dict, attrs: dict, chunk_rows: int,
            tables: dict[str, np.ndarray]) -> None:
    """Build the group in a temporary sibling directory, then rename it to ``path``, so an
    interrupted creation never leaves a half-made store at ``path``."""
    if n_nets < 0 or chunk_rows < 1 or min(widths.values()) < 0:
        raise ValueError(f"bad store shape: n_nets={n_nets}, chunk_rows={chunk_rows}, {widths}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = creating_dir(path)
    try:
        group = zarr.open_group(LocalStore(tmp), mode="w-", zarr_format=3, attributes=attrs)
        for name, (dtype, width) in _SCHEMA.items():
            shape = (n_nets,) if width is None else (n_nets, widths[width])
            group.create_array(
                name, shape=shape, dtype=dtype, chunks=(chunk_rows, *shape[1:]),
                fill_value=np.nan if np.issubdtype(dtype, np.floating) else 0,
                compressors=None if name in WEIGHT_ARRAYS else _CHECKSUMMED,
                dimension_names=("net",) if width is None else ("net", _DIM_NAMES[width]),
                attributes={"codes": {str(k): v for k, v in STATUS_NAMES.items()}}
                if name == "status" else None,
            )
        _create_row_checksums(group, n_nets, chunk_rows)
        for name, spec in attrs.get(PER_NET, {}).items():
            dtype, row = np.dtype(spec["dtype"]), tuple(spec["shape"])
            group.require_group(PER_NET).create_array(
                name, shape=(n_nets, *row), dtype=dtype, chunks=(chunk_rows, *row),
                fill_value=np.nan if np.issubdtype(dtype, np.floating) else 0,
                compressors=_CHECKSUMMED)
        for name, table in tables.items():
            group.require_group(TABLES).create_array(name, data=np.asarray(table),
                                                     compressors=_CHECKSUMMED)
        os.replace(tmp, path)  # replaces an empty directory too (POSIX rename)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _checked_arrays(path: Path, group: zarr.Group, attrs: dict) -> dict[str, zarr.Array]:
    """The schema's arrays, after checking attrs, names, dtypes and shapes agree."""
    damaged = f"store at {path} is damaged"
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise DamagedStoreError(f"{damaged}: attrs lack {', '.join(missing)}")
    if attrs["format_version"] != FORMAT_VERSION:
        raise StoreError(f"store at {path} has format_version {attrs['format_version']}, "
                         f"this mlds_jax reads {FORMAT_VERSION}")
    arrays = {}
    for name, (dtype, width) in _SCHEMA.items():
        try:
            a = group[name]
        except KeyError:
            old = path / f".{name}.old"
            if old.is_dir():
                raise DamagedStoreError(f"{damaged}: array {name!r} is missing; an interrupted "
                                        f"`mlds pack` left it at {old}: rename that back to "
                                        f"{path / name}") from None
            raise DamagedStoreError(f"{damaged}: array {name!r} is missing") from None
        except Exception as e:
            raise _read_error(path, f"{name}/zarr.json", e) from e
        rank = 1 if width is None else 2
        if not isinstance(a, zarr.Array) or a.dtype != dtype or a.ndim != rank:
            raise DamagedStoreError(f"{damaged}: {name!r} is not a {np.dtype(dtype)} array of "
                                    f"the expected rank")
        arrays[name] = a
    n = arrays["status"].shape[0]
    for name, a in arrays.items():
        if a.shape[0] < n:  # longer than status is an unfinished extension, completed later
            raise DamagedStoreError(f"{damaged}: {name!r} has {a.shape[0]} rows, status {n}")
    if arrays["weights"].shape[1] != arrays["initial_weights"].shape[1]:
        raise DamagedStoreError(f"{damaged}: weights and initial_weights widths differ")
    if arrays["val_accuracy"].shape[1] != len(attrs["accuracy_names"]):
        raise DamagedStoreError(f"{damaged}: val_accuracy has {arrays['val_accuracy'].shape[1]}"
                                f" columns, accuracy_names {len(attrs['accuracy_names'])}")
    widths = {len(attrs["hyperparameter_names"])}
    if WIDENING in attrs:  # a widening by mlds_jax.store.upgrade, not finished yet
        widths.add(len(attrs[WIDENING]["hyperparameter_names"]))
    if arrays["hyperparameters"].shape[1] not in widths:
        raise DamagedStoreError(f"{damaged}: hyperparameters has "
                                f"{arrays['hyperparameters'].shape[1]} columns, "
                                f"hyperparameter_names {len(attrs['hyperparameter_names'])}")
    return arrays


def _checked_per_net(path: Path, group: zarr.Group, attrs: dict) -> dict[str, zarr.Array]:
    """The arrays attrs["per_net"] declares, checked against it (absent: none)."""
    out = {}
    for name, spec in attrs.get(PER_NET, {}).items():
        try:
            a = group[f"{PER_NET}/{name}"]
        except KeyError:
            raise DamagedStoreError(f"store at {path} is damaged: array "
                                    f"{PER_NET}/{name!r} is missing") from None
        except Exception as e:
            raise _read_error(path, f"{PER_NET}/{name}/zarr.json", e) from e
        if a.dtype != np.dtype(spec["dtype"]) or list(a.shape[1:]) != list(spec["shape"]):
            raise DamagedStoreError(f"store at {path} is damaged: {PER_NET}/{name} is not "
                                    f"{spec['dtype']} rows of shape {spec['shape']}")
        out[name] = a
    return out
