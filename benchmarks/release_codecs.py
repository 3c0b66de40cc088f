"""Which codec should a released archive's arrays use? Compressed size of the real arrays of
a store under candidate codecs, chunk by chunk as zarr would store them.

Usage: python benchmarks/release_codecs.py STORE [--nets N] [--arrays weights,...]

For each array (default: weights, initial_weights, loss_curve) the first N rows (default:
all finished rows' tier, i.e. the whole store) are cut into the store's chunks of rows and
each chunk is encoded alone: raw float32 (what the weights are now), zstd level 3 (what
every other array uses now, zarr's ZstdCodec level 0), zstd 19, DEFLATE level 6 (a zip
entry compressed by zipfile), xz preset 6 (the original MLDS's tar.xz, per chunk here), and
blosc with zstd 5 after a byte shuffle or a bit shuffle. Prints MB and the share of raw per
codec, and encode / decode MB/s (of raw bytes, one core, one run: indicative).
"""

from __future__ import annotations

import argparse
import lzma
import time
import zlib

import numpy as np
from numcodecs import Blosc, Zstd

from mlds_jax.research.reader import open_dataset

CODECS = {
    "raw": (lambda a: a.tobytes(), lambda b: b),
    "zstd-3": (Zstd(level=3).encode, Zstd(level=3).decode),
    "zstd-19": (Zstd(level=19).encode, Zstd(level=19).decode),
    "deflate-6": (lambda b: zlib.compress(b, 6), zlib.decompress),
    "xz-6": (lambda b: lzma.compress(b, preset=6), lzma.decompress),
    "blosc-zstd5-shuffle": (Blosc("zstd", 5, Blosc.SHUFFLE, blocksize=0).encode,
                            Blosc("zstd", 5, Blosc.SHUFFLE).decode),
    "blosc-zstd5-bitshuffle": (Blosc("zstd", 5, Blosc.BITSHUFFLE, blocksize=0).encode,
                               Blosc("zstd", 5, Blosc.BITSHUFFLE).decode),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store")
    p.add_argument("--nets", type=int, help="first N rows (default: all)")
    p.add_argument("--arrays", default="weights,initial_weights,loss_curve")
    args = p.parse_args()
    ds = open_dataset(args.store)
    n = len(ds) if args.nets is None else args.nets
    rows = ds.chunk_rows
    print(f"{args.store}: first {n} nets, chunks of {rows} rows")
    for name in args.arrays.split(","):
        data = np.ascontiguousarray(ds.store.read_array(name, n), "<f4")
        finite = np.isfinite(data).mean()
        print(f"\n{name} {data.shape} float32, {data.nbytes / 1e6:.1f} MB raw, "
              f"{100 * finite:.1f}% finite")
        # float32 arrays, not bytes: blosc's shuffle works on the buffer's item size
        chunks = [data[lo : lo + rows] for lo in range(0, n, rows)]
        for codec, (enc, dec) in CODECS.items():
            t0 = time.perf_counter()
            out = [enc(c) for c in chunks]
            t1 = time.perf_counter()
            back = [dec(c) for c in out]
            t2 = time.perf_counter()
            assert all(bytes(a) == c.tobytes() for a, c in zip(back, chunks)), codec
            size = sum(len(c) for c in out)
            print(f"  {codec:24s} {size / 1e6:8.2f} MB  {100 * size / data.nbytes:5.1f}%  "
                  f"enc {data.nbytes / 1e6 / max(t1 - t0, 1e-9):7.0f} MB/s  "
                  f"dec {data.nbytes / 1e6 / max(t2 - t1, 1e-9):7.0f} MB/s")


if __name__ == "__main__":
    main()
