"""The weights arrays' chunk files as raw float32 rows: positioned reads, memory maps, and
``pack()``, which rewrites them as one block so that a single [N, P] memory map exists.

On disk. ``weights`` and ``initial_weights`` (N, P) are stored uncompressed, little-endian,
chunked along the net axis only (``chunk_rows`` rows, full width). Chunk ``i`` is then the
raw float32 block of rows ``[i * chunk_rows, (i + 1) * chunk_rows)``, ``chunk_rows * P * 4``
bytes, in one of two layouts:

- chunked (what ``mlds generate`` writes): one file ``<array>/c/<i>/0`` per chunk, so a
  net is one positioned read, a chunk one memory map, but the N rows are spread over
  N / chunk_rows files and no single [N, P] memory map of them exists;
- packed (``mlds pack``): one zarr shard ``<array>/c/0/0`` of uncompressed inner chunks
  written in order, the shard index at the end, so its first N * P * 4 bytes are the
  [N, P] matrix, memory-mapped zero-copy, while zarr and other zarr v3 readers still read
  one net through the index.

Why the generator writes the chunked layout, measured (N = 50,000, P = 4,364, 873 MB,
2 CPU cores, zarr 3.1; ``chunk_rows`` = 64):

    layout                         write 64 rows    write 64 rows   read 1 net  one [N, P]
                                   (one chunk)      (scattered)     (zarr)      memmap
    chunks of 64 rows (chosen)     0.003 s          0.7 s           5 ms        no: one per chunk
    one chunk of all N rows        23 s             42 s            1,150 ms    yes
    one shard, inner chunks of 64  5.8 s            fails (a zarr   2.4 ms      yes, offset 0
                                                    3.1 bug)

A single chunk or shard along N rewrites the whole 873 MB file for every batch of finished
nets and allows one writer for the whole store, against the plan of several processes each
owning a range of chunks. Read through ``RawRows``, the chunked layout still gives one net
in under 0.1 ms and all 50,000 within 1.5x of ``numpy.load(mmap_mode="r")`` of the same
matrix as a .npy (benchmarks/read_bench.py); the one memory map waits for ``pack()`` on a
finished store. A packed store is for reading: ``mlds_jax.store`` refuses to write to or
extend it until ``pack(path, unpack=True)`` restores the chunked layout.

Built over ``mlds_jax.store`` (which never imports this module); numpy, zarr and the
standard library otherwise.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ShardingCodec
from zarr.storage import LocalStore

from mlds_jax.store.dataset_store import DatasetStore
from mlds_jax.store.schema import (
    WEIGHT_ARRAYS,
    DamagedStoreError,
    StoreError,
    has_default_keys,
    is_packed,
    is_raw_le,
)


class RawRows:
    """The raw little-endian float32 rows of one (N, P) weights array, located on disk.

    Chunk ``i`` holds rows ``[i * chunk_rows, (i + 1) * chunk_rows)`` as one contiguous
    block of ``chunk_rows * P * 4`` bytes at ``location(i)`` = (file, byte offset), or at
    None where it was never written (its rows read as the fill value, NaN). Chunked layout
    (what the generator writes): one file ``<array>/c/<i>/0`` per chunk, offset 0. Packed
    layout (``pack()``): one shard file ``<array>/c/0/0``, offsets from the shard's index.
    Nothing is cached but the packed index: a reader sees chunks written after it was made.
    """

    def __init__(self, array_dir: Path, n_rows: int, n_cols: int, chunk_rows: int,
                 shard_index: np.ndarray | None = None):
        self.array_dir = array_dir
        self.n_rows, self.n_cols, self.chunk_rows = n_rows, n_cols, chunk_rows
        self._shard_index = shard_index  # (chunks, 2) uint64 offset, length; packed only

    @classmethod
    def of(cls, store: DatasetStore, name: str) -> "RawRows | None":
        """Where the raw rows of ``store``'s array ``name`` (``weights`` or
        ``initial_weights``) lie on disk, or None if its codecs compress or reorder the
        bytes. DamagedStoreError if a packed array's shard index fails its checksum."""
        if name not in WEIGHT_ARRAYS:
            raise ValueError(f"only {', '.join(WEIGHT_ARRAYS)} are stored raw, not {name!r}")
        if store.archive:  # inside a zip: no files of their own
            return None
        array_dir, a, n_rows = store.path / name, store.array(name), store.n_nets
        codecs = a.metadata.codecs
        if a.dtype != np.float32 or a.ndim != 2 or not has_default_keys(a) or len(codecs) != 1:
            return None
        n_cols, chunk_rows = a.shape[1], a.chunks[0]
        if a.chunks[1] != n_cols:
            return None
        if not is_packed(a):
            return cls(array_dir, n_rows, n_cols, chunk_rows) if is_raw_le(codecs[0]) else None
        sc = codecs[0]
        if not (isinstance(sc, ShardingCodec) and len(sc.codecs) == 1 and is_raw_le(sc.codecs[0])
                and a.shards[0] >= a.shape[0] and a.shards[1] == n_cols
                and len(sc.index_codecs) == 2 and is_raw_le(sc.index_codecs[0])
                and isinstance(sc.index_codecs[1], Crc32cCodec)):
            return None
        n_inner = a.shards[0] // chunk_rows
        index = np.full((n_inner, 2), np.iinfo(np.uint64).max, np.uint64)
        shard = array_dir / "c" / "0" / "0"
        if shard.exists():
            nbytes = n_inner * 16 + 4
            size = shard.stat().st_size
            with open(shard, "rb") as f:
                f.seek(0 if sc.index_location.value == "start" else max(size - nbytes, 0))
                raw = f.read(nbytes)
            if len(raw) != nbytes or google_crc32c.value(raw[:-4]) != int.from_bytes(
                    raw[-4:], "little"):
                raise DamagedStoreError(f"store at {array_dir.parent} is damaged: the shard "
                                        f"index of {shard} does not match its checksum")
            index = np.frombuffer(raw[:-4], "<u8").reshape(n_inner, 2).astype(np.uint64)
        return cls(array_dir, n_rows, n_cols, chunk_rows, shard_index=index)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_rows * self.n_cols * 4

    def _contiguous(self) -> bool:
        """Packed, with every chunk present and in order: memmap() will succeed."""
        if self._shard_index is None or self.n_rows == 0:
            return False
        index = self._shard_index[: self.n_chunks].astype(np.int64)
        want = index[0, 0] + np.arange(self.n_chunks) * self.chunk_bytes
        return bool((index[:, 0] == want).all() and (index[:, 1] == self.chunk_bytes).all())

    def location(self, i: int) -> tuple[Path, int] | None:
        """(file, byte offset) of chunk ``i``'s block, or None if it was never written."""
        if self._shard_index is not None:
            offset, length = (int(v) for v in self._shard_index[i])
            if offset == np.iinfo(np.uint64).max:
                return None
            if length != self.chunk_bytes:
                raise DamagedStoreError(f"store at {self.array_dir.parent} is damaged: inner "
                                        f"chunk {i} of {self.array_dir.name} holds {length} "
                                        f"bytes, not {self.chunk_bytes}")
            return self.array_dir / "c" / "0" / "0", offset
        path = self.array_dir / "c" / str(i) / "0"
        return (path, 0) if path.exists() else None

    def _rows_in(self, i: int) -> int:
        return min(self.chunk_rows, self.n_rows - i * self.chunk_rows)

    def memmap(self) -> np.ndarray:
        """(N, P) read-only ``numpy.memmap`` of every row, zero-copy. StoreError unless all
        rows lie in one file in order (a packed store, or one with a single chunk)."""
        if self.n_rows == 0:
            return np.empty((0, self.n_cols), np.float32)
        locs = [self.location(i) for i in range(self.n_chunks)]
        store = self.array_dir.parent
        hint = (f"run `mlds pack {store}` to store them as one [N, P] block, or use "
                f"chunk_memmaps()")
        if any(loc is None for loc in locs):
            missing = next(i for i, loc in enumerate(locs) if loc is None)
            raise StoreError(f"{self.array_dir.name} of {store}: chunk {missing} (rows from "
                             f"{missing * self.chunk_rows}) was never written, so there is no "
                             f"single [N, P] memory map; {hint}")
        first, offset = locs[0]
        if any(loc != (first, offset + i * self.chunk_bytes) for i, loc in enumerate(locs)):
            raise StoreError(f"{self.array_dir.name} of {store} is stored in {self.n_chunks} "
                             f"chunk files of {self.chunk_rows} rows (the layout `mlds "
                             f"generate` writes); {hint}")
        with _Files() as files:
            self._checked_location(self.n_chunks - 1, files)  # the file is long enough
        return np.memmap(first, dtype="<f4", mode="r", offset=offset,
                         shape=(self.n_rows, self.n_cols))

    def chunk_memmaps(self) -> list[np.ndarray | None]:
        """One read-only (rows in chunk i, P) memmap per chunk, None where never written."""
        out = []
        with _Files() as files:
            for i in range(self.n_chunks):
                loc = self._checked_location(i, files)
                out.append(None if loc is None else np.memmap(
                    loc[0], dtype="<f4", mode="r", offset=loc[1],
                    shape=(self._rows_in(i), self.n_cols)))
        return out

    def read(self, ids=None) -> np.ndarray:
        """(R, P) float32 copy of rows ``ids`` (any order, repeats allowed; None: all rows).

        Positioned reads straight into the result, one per run of consecutive rows of a
        chunk (measured faster than a memmap per chunk: no mapping, no page faults)."""
        if ids is None:
            return self._read_all()
        ids = np.asarray(ids, np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_rows):
            raise IndexError(f"rows must lie in [0, {self.n_rows})")
        if ids.size > self.chunk_rows and self._contiguous():
            # packed: many rows from one mapping, as numpy would from a .npy (fancy indexing:
            # np.take with out= measured twice as slow)
            return np.asarray(self.memmap()[ids])
        out = np.empty((ids.size, self.n_cols), np.float32)
        if not ids.size:
            return out
        chunk = ids // self.chunk_rows
        order = np.argsort(chunk, kind="stable")
        starts = np.flatnonzero(np.diff(chunk[order], prepend=-1))
        with _Files() as files:
            for sel in np.split(order, starts[1:]):
                i = int(chunk[sel[0]])
                src = self._source(i, files)
                if src is None:
                    out[sel] = np.nan
                    continue
                local = ids[sel] - i * self.chunk_rows
                if sel.size == 1 or (np.all(np.diff(local) > 0) and np.all(np.diff(sel) == 1)):
                    self._read_rows(*src, local, out[sel[0] : sel[-1] + 1])  # ascending ids
                else:
                    rows, back = np.unique(local, return_inverse=True)
                    buf = np.empty((rows.size, self.n_cols), np.float32)
                    self._read_rows(*src, rows, buf)
                    out[sel] = buf[back]
        return out

    def read_chunk(self, i: int, out: np.ndarray | None = None) -> np.ndarray | None:
        """Rows of chunk ``i`` (rows in it, P) as stored, into ``out`` if given; None if the
        chunk was never written. DamagedStoreError if its file is too short or too long."""
        with _Files() as files:
            src = self._source(i, files)
            if src is None:
                return None
            if out is None:
                out = np.empty((self._rows_in(i), self.n_cols), np.float32)
            self._read_into(*src, out)
        return out

    def _read_all(self) -> np.ndarray:
        out = np.empty((self.n_rows, self.n_cols), np.float32)
        with _Files() as files:
            for i in range(self.n_chunks):
                lo = i * self.chunk_rows
                block = out[lo : lo + self._rows_in(i)]
                src = self._source(i, files)
                if src is None:
                    block[:] = np.nan
                else:
                    self._read_into(*src, block)
        return out

    def _checked_location(self, i: int, files: "_Files") -> tuple[Path, int] | None:
        """(file, byte offset) of chunk i after checking its file's size; None if the chunk
        was never written. A file is opened once per ``files`` (a packed shard once)."""
        if self._shard_index is None:  # chunked: try the file rather than stat it first
            loc = (self.array_dir / "c" / str(i) / "0", 0)
        else:
            loc = self.location(i)
            if loc is None:
                return None
        opened = files.open(loc[0])
        if opened is None:
            return None
        size = opened[1]
        if self._shard_index is None:
            bad, need = size != self.chunk_bytes, self.chunk_bytes
        else:
            need = loc[1] + self._rows_in(i) * self.n_cols * 4
            bad = size < need
        if bad:
            raise DamagedStoreError(f"store at {self.array_dir.parent} is damaged: {loc[0]} "
                                    f"holds {size} bytes, expected {need}")
        return loc

    def _source(self, i: int, files: "_Files"):
        """(open file, byte offset) of chunk i, as ``_checked_location``."""
        loc = self._checked_location(i, files)
        return None if loc is None else (files.open(loc[0])[0], loc[1])

    def _read_rows(self, f, offset: int, rows: np.ndarray, out: np.ndarray) -> None:
        """Ascending unique rows ``rows`` of the block at ``offset`` into ``out`` (len(rows),
        P): one read per run of consecutive rows."""
        row_bytes = self.n_cols * 4
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, rows.size]):
            self._read_into(f, offset + int(rows[lo]) * row_bytes, out[lo:hi])

    def _read_into(self, f, offset: int, out: np.ndarray) -> None:
        """Fill the C-contiguous array ``out`` with the bytes of ``f`` from ``offset``."""
        view = memoryview(out).cast("B")
        done = 0
        while done < view.nbytes:
            if hasattr(os, "preadv"):
                n = os.preadv(f.fileno(), [view[done:]], offset + done)
            else:
                f.seek(offset + done)
                n = f.readinto(view[done:])
            if not n:
                raise DamagedStoreError(f"store at {self.array_dir.parent} is damaged: short "
                                        f"read of {self.array_dir.name} at byte "
                                        f"{offset + done}")
            done += n


class _Files:
    """Files opened (unbuffered) for one read, each once, all closed at the end."""

    def __init__(self):
        self._open: dict[Path, tuple] = {}

    def open(self, path: Path):
        """(file, size in bytes), or None if there is no such file."""
        if path not in self._open:
            try:
                f = open(path, "rb", buffering=0)
            except FileNotFoundError:
                return None
            self._open[path] = (f, os.fstat(f.fileno()).st_size)
        return self._open[path]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for f, _ in self._open.values():
            f.close()


# ---- packing ------------------------------------------------------------------------------


def pack(path, *, unpack: bool = False) -> list[str]:
    """Rewrite ``weights`` and ``initial_weights`` of the store at ``path`` as one shard each
    (``unpack``: back to chunks of ``chunk_rows`` rows, the layout the generator writes).

    Packed, each is one shard of uncompressed inner chunks of ``chunk_rows`` rows, written in
    order with the shard index at the end, so the first N * P * 4 bytes of ``<array>/c/0/0``
    are the [N, P] float32 matrix (``RawRows.memmap``), and zarr and other zarr v3 readers
    still read one net through the index. Each array is built in ``.<name>.new`` beside it,
    checked, and swapped in with two renames. Run it on a store no process is writing to.
    Returns the names of the arrays rewritten (none if already in the asked layout)."""
    store = DatasetStore.open(path, mode="r+")
    done = []
    for name in WEIGHT_ARRAYS:
        a = store.array(name)
        if is_packed(a) != unpack:
            continue
        new_dir = store.path / f".{name}.new"
        shutil.rmtree(new_dir, ignore_errors=True)
        try:
            _unpack_array(a, new_dir) if unpack else _pack_array(a, new_dir)
            _check_same_rows(a, zarr.open_array(LocalStore(new_dir, read_only=True), mode="r"))
            old_dir = store.path / f".{name}.old"
            shutil.rmtree(old_dir, ignore_errors=True)
            os.rename(store.path / name, old_dir)
            os.rename(new_dir, store.path / name)
            shutil.rmtree(old_dir)
        except OSError as e:
            raise StoreError(f"cannot {'unpack' if unpack else 'pack'} {name} of store at "
                             f"{store.path}: {e.strerror or e}") from e
        finally:
            shutil.rmtree(new_dir, ignore_errors=True)
        done.append(name)
    return done


def _array_kwargs(a: zarr.Array) -> dict:
    return dict(shape=a.shape, dtype=np.float32, fill_value=np.nan, compressors=None,
                dimension_names=a.metadata.dimension_names, attributes=dict(a.attrs),
                zarr_format=3)


def _pack_array(a: zarr.Array, new_dir: Path) -> None:
    n, p = a.shape
    rows = a.chunks[0]
    n_inner = max(1, -(-n // rows))
    zarr.create_array(LocalStore(new_dir), chunks=(rows, p), shards=(n_inner * rows, p),
                      **_array_kwargs(a))
    if n == 0:
        return
    block_bytes = rows * p * 4
    shard = new_dir / "c" / "0" / "0"
    shard.parent.mkdir(parents=True)
    tmp = shard.with_name("0.partial")
    with open(tmp, "wb") as f:
        for i in range(n_inner):  # inner chunks in order: the matrix, then the index
            block = np.full((rows, p), np.nan, "<f4")
            lo, hi = i * rows, min((i + 1) * rows, n)
            block[: hi - lo] = a[lo:hi]
            f.write(block.tobytes())
        index = np.stack([np.arange(n_inner, dtype="<u8") * block_bytes,
                          np.full(n_inner, block_bytes, "<u8")], axis=1).astype("<u8")
        f.write(index.tobytes())
        f.write(np.uint32(google_crc32c.value(index.tobytes())).astype("<u4").tobytes())
    os.replace(tmp, shard)


def _unpack_array(a: zarr.Array, new_dir: Path) -> None:
    n, p = a.shape
    rows = a.chunks[0]
    new = zarr.create_array(LocalStore(new_dir), chunks=(rows, p), **_array_kwargs(a))
    for lo in range(0, n, rows):
        block = a[lo : lo + rows]
        if not np.isnan(block).all():  # zarr leaves all-fill chunks unwritten anyway
            new[lo : lo + rows] = block


def _check_same_rows(old: zarr.Array, new: zarr.Array) -> None:
    """The rewritten array must read back the same, through zarr: first, middle, last row."""
    if old.shape != new.shape:
        raise StoreError(f"rewritten array has shape {new.shape}, not {old.shape}")
    for i in sorted({0, old.shape[0] // 2, old.shape[0] - 1} - {-1}):
        if not np.array_equal(old[i], new[i], equal_nan=True):
            raise StoreError(f"rewritten array differs from the original at row {i}")
