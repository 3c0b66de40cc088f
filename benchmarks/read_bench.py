"""Read benchmark: a DS1-sized store (50,000 x 4,364 float32, 873 MB of weights) against
the same matrix as a `.npy` read with `numpy.load(mmap_mode="r")`, in the same run.

Usage: python benchmarks/read_bench.py [--nets 50000] [--dir /tmp] [--repeat 7] [--keep]

The store is written once with the real store code (`mlds_jax.generate.open_store` with the
ds1 config, `DatasetStore.write_rows` in batches of whole chunks, as the generator does) into
a temporary directory under --dir (about 2 GB: weights and initial weights, plus the .npy),
then timed in its chunked layout (what `mlds generate` writes) and again after `mlds pack`.

Caches: both the store's chunk files and the .npy were just written and are then read once
in full before any timing, so every number is a warm-page-cache number for both sides
(no disk reads).
Each figure is the median over --repeat calls (one net: the mean over 200 random nets per
call), ours and the baseline called alternately; zarr's own reads 2 calls each.
One net: both sides already open (a Dataset, a memmap), as in a loop over nets. One task
(every 5th row, 10,000 nets) and everything: each call opens afresh and copies into a new
array on both sides (`np.array(np.load(npy, mmap_mode="r")[2::5])`, `np.array(...)`);
zarr's own reads (`ds.weights[...]`) are listed for reference.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import mlds_jax
from mlds_jax import generate as gen
from mlds_jax.config.load import load_config
from mlds_jax.store.rawrows import pack


def build(root: Path, n: int):
    cfg = load_config("ds1")
    store = gen.open_store(cfg, root / "bench.zarr", n_nets=n)
    p = store.n_params
    npy = np.lib.format.open_memmap(root / "weights.npy", mode="w+", dtype=np.float32,
                                    shape=(n, p))
    rng = np.random.default_rng(0)
    batch = 50 * cfg.run.chunk_rows  # whole chunks, as a generator's writer owns them
    t = time.perf_counter()
    for lo in range(0, n, batch):
        ids = np.arange(lo, min(lo + batch, n))
        r = len(ids)
        w = rng.standard_normal((r, p), dtype=np.float32)
        loss = np.full((r, store.n_log), np.nan, np.float32)
        loss[:, :50] = 0.5
        store.write_rows(ids, weights=w, initial_weights=0.1 * w, task=ids % cfg.num_tasks,
                         seed=np.zeros(r, np.uint64), status=np.ones(r, np.uint8),
                         epochs=np.full(r, 50, np.int32), loss_curve=loss,
                         val_accuracy=np.ones((r, store.n_accuracies), np.float32),
                         hyperparameters=np.zeros((r, store.n_hyper), np.float32))
        npy[lo : lo + r] = w
    npy.flush()
    del npy
    return root / "bench.zarr", root / "weights.npy", time.perf_counter() - t


def warm(paths) -> None:
    """Read every file once so that both sides start from a warm page cache."""
    for top in paths:
        files = [top] if top.is_file() else [f for f in top.rglob("*") if f.is_file()]
        for f in files:
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass


def pair(ours, base, repeat: int) -> tuple[float, float]:
    """Median seconds of ours() and base(), called alternately (so that a background load
    that comes and goes weighs on both alike)."""
    a, b = [], []
    for _ in range(repeat):
        for fn, times in ((ours, a), (base, b)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(a), statistics.median(b)


def bench(store: Path, npy: Path, repeat: int, layout: str) -> list[tuple]:
    ds = mlds_jax.open_dataset(store)
    m = np.load(npy, mmap_mode="r")
    n = len(ds)
    one = np.random.default_rng(1).integers(0, n, 200)
    task_ids = ds.select(task=2)  # every 5th row
    # Bulk reads open afresh in every call on both sides: a memmap reused across calls
    # would keep its pages mapped and skip the page faults a first read pays.
    fresh = lambda: np.load(npy, mmap_mode="r")  # noqa: E731

    def loop(fn, ids):
        def run():
            for i in ids:
                fn(int(i))
        return run

    rows = [(f"open ({layout})", *pair(lambda: mlds_jax.open_dataset(store), fresh, repeat))]
    ours, base = pair(loop(lambda i: ds.load_weights([i]), one), loop(lambda i: np.array(m[i]),
                                                                     one), repeat)
    rows.append(("one net: load_weights([n])", ours / len(one), base / len(one)))
    ours, base = pair(loop(lambda i: ds.weights[i], one[:20]), loop(lambda i: np.array(m[i]),
                                                                   one[:20]), 2)
    rows.append(("one net: ds.weights[n] (zarr)", ours / 20, base / 20))
    if layout == "packed":
        mm = ds.weights_memmap()
        ours, base = pair(loop(lambda i: np.array(mm[i]), one), loop(lambda i: np.array(m[i]),
                                                                     one), repeat)
        rows.append(("one net: weights_memmap()[n] copy", ours / len(one), base / len(one)))
    npy_task = lambda: np.array(fresh()[2::5])  # noqa: E731
    rows.append((f"one task, {len(task_ids):,} nets: load_weights(ids)",
                 *pair(lambda: mlds_jax.open_dataset(store).load_weights(task_ids), npy_task,
                       repeat)))
    rows.append(("one task: weights.oindex[ids] (zarr)",
                 *pair(lambda: ds.weights.oindex[task_ids], npy_task, 2)))
    npy_all = lambda: np.array(fresh())  # noqa: E731
    rows.append(("everything: load_weights()",
                 *pair(lambda: mlds_jax.open_dataset(store).load_weights(), npy_all, repeat)))
    rows.append(("everything: weights[:] (zarr)", *pair(lambda: ds.weights[:], npy_all, 2)))
    if layout == "packed":
        rows.append(("everything: np.array(weights_memmap())",
                     *pair(lambda: np.array(mlds_jax.open_dataset(store).weights_memmap()),
                           npy_all, repeat)))
    return rows


def fmt_time(s: float) -> str:
    return f"{s * 1e6:8.1f} us" if s < 1e-3 else f"{s * 1e3:8.2f} ms" if s < 1 else f"{s:8.3f} s "


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", type=int, default=50_000)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the data go")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the data afterwards")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="mlds-read-bench-", dir=args.dir))
    try:
        store, npy, t_write = build(root, args.nets)
        size = os.path.getsize(npy)
        print(f"{args.nets:,} x {mlds_jax.open_dataset(store).n_params:,} float32 "
              f"({size / 1e6:,.0f} MB of weights); store written in {t_write:.1f} s "
              f"(weights, initial weights and the rest), warm page cache for both sides")
        warm([store, npy])
        rows = bench(store, npy, args.repeat, "chunked")
        t = time.perf_counter()
        pack(store)
        t_pack = time.perf_counter() - t
        warm([store])
        rows += bench(store, npy, args.repeat, "packed")
        print(f"mlds pack: {t_pack:.1f} s for weights and initial_weights")
        print()
        print(f"| {'operation':<44} | {'mlds-jax':>11} | {'.npy mmap':>11} | ratio |")
        print(f"|{'-' * 46}|{'-' * 13}|{'-' * 13}|-------|")
        for name, ours, base in rows:
            print(f"| {name:<44} | {fmt_time(ours)} | {fmt_time(base)} | "
                  f"{ours / base:5.2f} |")
        print()
        print("ratio = mlds-jax / .npy (lower is better). Chunked = the layout `mlds generate` "
              "writes (64-row chunk files); packed = after `mlds pack`.")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
