"""Before and while a run writes: refuse a tier this machine cannot hold (disk for the new
rows, memory to track them) before anything is written, and say in one line what a failed
write means (for a full disk: the space the nets left still need)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from mlds_jax.config.dataset import DatasetConfig
from mlds_jax.config.sections import SWEEPABLE
from mlds_jax.store.dataset_store import DatasetStore
from mlds_jax.store.schema import StoreError, row_bytes
from mlds_jax.train import models


def preflight(cfg: DatasetConfig, out: str | Path, total: int, overwrite: bool) -> None:
    """Refuse, before anything is written, a tier this machine cannot hold: the disk the new
    rows need at `out` and the host memory resuming needs (every row's status, plus ids)."""
    out = Path(out)
    existing = 0
    if not overwrite and (out / "zarr.json").is_file():
        try:
            existing = DatasetStore.open(out, mode="r").n_nets
        except StoreError:
            pass  # open_or_create says what is wrong with it
    need_disk = max(total - existing, 0) * row_bytes(
        n_params=models.num_params(cfg.network), n_log=cfg.max_cap,
        n_accuracies=len(cfg.accuracy_names), n_hyper=len(SWEEPABLE))
    need_mem = total * 9  # status (uint8) and pending ids (int64) of every row
    where = next(p for p in (out, *out.absolute().parents) if p.exists())
    free_disk = shutil.disk_usage(where).free
    memory = _host_memory()
    problems = []
    if need_disk > free_disk:
        problems.append(f"their rows need {_size(need_disk)} of disk ({_size(free_disk)} "
                        f"free at {where})")
    if memory and need_mem > memory:
        problems.append(f"tracking them needs {_size(need_mem)} of memory "
                        f"({_size(memory)} here)")
    if problems:
        raise StoreError(f"{total:,} nets cannot be made here: {'; '.join(problems)}; "
                         f"choose a smaller --per-task")


def _host_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1000 or unit == "EB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError


def write_error(cfg: DatasetConfig, store: DatasetStore, total: int, e: OSError) -> StoreError:
    """One line for a failed write: the path, and for a full disk the space still needed."""
    why = e.strerror or str(e)
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"cannot write to store at {store.path}: {why}")
    left = len(store.pending(total))
    need = left * row_bytes(n_params=store.n_params, n_log=store.n_log,
                            n_accuracies=store.n_accuracies, n_hyper=store.n_hyper)
    return StoreError(f"disk full writing to {store.path} ({why}): the {left} nets left need "
                      f"about {_size(need)}, {_size(shutil.disk_usage(store.path).free)} are "
                      f"free; the {total - left} nets stored are kept, free space and rerun "
                      f"the same command")
