"""Release tiers as single files: ``mlds release STORE --tiers 100,500 --out DIR`` writes the
first ``K * k`` nets (K tasks, k nets per task) of a finished store as one zip file per tier,
``DIR/<dataset>-<k>.zarr.zip``, with their SHA-256 in ``DIR/SHA256SUMS`` (``sha256sum -c``).

What an archive holds: the tier as a Zarr v3 store of its own at the root of the zip (so
``zarr.storage.ZipStore`` and tensorstore's zip kvstore read it in place, and ``unzip`` gives
a store ``mlds`` opens): every array cut to the tier's rows (``checksums/rows`` included, the
same crc32c of the same float32 rows; DS4's ``per_net/`` trigger specs too), the attrs and
the tables (DS3: the automata; DS4: the digits split) as they are, and, when the store has
them, the analysis split restated for the tier
(``analysis/split.npy``, ``splits.json``) and the card (README.md and figures/) rendered for
the tier with the date of the store's card. Not copied: results ``mlds analyze`` computed on
the whole store (analysis.json, normalisation statistics, its figures), leases, checkpoints.

Layout inside the zip. Every array is chunked along the nets as in the store, in zarr's plain
chunk layout: a packed store's one-shard weights are written out as chunks again, so nothing
outside the zip is needed. The two weights arrays are compressed for the release with blosc
(zstd level 5 after a bit shuffle of the float32 bytes), measured the best of the codecs tried
on real DS1 weights (``benchmarks/release_codecs.py``: 85.5% of raw, zstd alone 92.7%, a byte
shuffle 87.0%, xz 92.4%); every other array keeps its store codec (zstd + crc32c). Zip entries
are stored, not deflated (zarr's codecs compress; a reader fetches byte ranges). A memory map
needs the raw rows of an unpacked store: ``mlds release --unpack`` extracts an archive and
runs ``mlds pack`` on it (so does ``unzip A -d D && mlds pack D``).

Reproducible bytes: entries in sorted order, every timestamp 1980-01-01 00:00, fixed
permissions and no extra fields; zarr's own encodings are deterministic, and the card's date
comes from the store's card. The same store and tier give the same archive, byte for byte.

Refused, in one line, before anything is written: a tier larger than the store, a tier with a
net not finished, a store that fails ``mlds verify``, a release archive as STORE.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.storage import LocalStore

from mlds_jax.store.dataset_store import DatasetStore
from mlds_jax.store.disk import abandoned_creating_dirs, creating_dir
from mlds_jax.store.schema import (
    ARRAY_NAMES,
    PER_NET,
    ROW_CHECKSUMS,
    STATUS_PENDING,
    TABLES,
    WEIGHT_ARRAYS,
    StoreError,
)

SUMS = "SHA256SUMS"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say: no build time in the bytes
WEIGHTS_CODEC = BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle", typesize=4)
_COPY_ROWS = 4096  # rows read and written at once (DS1: 70 MB per weights array)


class ReleaseError(StoreError):
    """Nothing releasable: one line naming why (the CLI prints it)."""


@dataclasses.dataclass(frozen=True)
class Released:
    tier: int  # nets per task
    nets: int  # K * tier
    path: Path
    sha256: str
    size: int  # bytes


def archive_name(dataset: str, tier: int) -> str:
    return f"{dataset}-{tier}.zarr.zip"


def release(store_path, tiers, out_dir, *,
            log: Callable[[str], None] = lambda line: None) -> list[Released]:
    """Write one archive per tier (nets per task, each >= 1) of the store at ``store_path``
    into ``out_dir`` and update ``out_dir/SHA256SUMS``; see the module docstring. Every tier
    is checked before any is written."""
    from mlds_jax.store.verify import verify

    store = DatasetStore.open(store_path, mode="r")
    if store.archive:
        raise ReleaseError(f"{store.path} is already a release archive; release from the store "
                           f"it was made from")
    tiers = sorted(set(int(t) for t in tiers))
    if not tiers or tiers[0] < 1:
        raise ReleaseError(f"tiers must be positive numbers of nets per task, got {tiers}")
    k = len(store.attrs["task_names"])
    status = store.read_array("status")
    for tier in tiers:
        n = k * tier
        if n > store.n_nets:
            raise ReleaseError(f"tier {tier} needs {n:,} nets ({k} tasks x {tier}); the store at "
                               f"{store.path} has {store.n_nets:,}")
        pending = np.flatnonzero(status[:n] == STATUS_PENDING)
        if pending.size:
            raise ReleaseError(f"tier {tier} is not finished: {pending.size:,} of its {n:,} nets "
                               f"are pending (first: net {pending[0]}); finish them with `mlds "
                               f"generate` (--per-task {tier}) before releasing")
    report = verify(store.path)
    if not report.ok:
        raise ReleaseError(f"store at {store.path} fails `mlds verify` ({len(report.problems)} "
                           f"problems, first: {report.problems[0]}); repair it before releasing")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReleaseError(f"cannot create {out_dir}: {e.strerror or e}") from e
    done = []
    for tier in tiers:
        name = archive_name(store.attrs["dataset"], tier)
        log(f"tier {tier}: {k * tier:,} nets -> {out_dir / name}")
        done.append(_release_tier(store, tier, k * tier, out_dir / name))
    _update_sums(out_dir, {r.path.name: r.sha256 for r in done})
    return done


def _release_tier(store: DatasetStore, tier: int, n: int, target: Path) -> Released:
    for leftover in abandoned_creating_dirs(target):  # a killed release's
        shutil.rmtree(leftover, ignore_errors=True)
    build = creating_dir(target)
    try:
        tier_dir = build / target.name  # the store's own name is what its card shows
        _write_tier(store, n, tier_dir)
        _check_tier(tier_dir, n)
        partial = build / f"{target.name}.partial"  # beside the target: renamed, not copied
        write_zip(tier_dir, partial)
        os.replace(partial, target)
    except OSError as e:
        raise ReleaseError(f"cannot write {target}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return Released(tier=tier, nets=n, path=target, sha256=sha256_of(target),
                    size=target.stat().st_size)


def _write_tier(store: DatasetStore, n: int, out: Path) -> None:
    """The first ``n`` rows of ``store`` as a store of their own at ``out``."""
    src = zarr.open_group(LocalStore(store.path, read_only=True), mode="r", zarr_format=3)
    root = zarr.open_group(LocalStore(out), mode="w-", zarr_format=3,
                           attributes=dict(src.attrs))
    per_net = [f"{PER_NET}/{name}" for name in store.per_net_names()]  # DS4's trigger specs
    for name in [*ARRAY_NAMES, ROW_CHECKSUMS, *per_net]:
        a = store.array(name) if name not in per_net else src[name]
        rows = a.chunks[0]
        new = root.create_array(
            name, shape=(n, *a.shape[1:]), dtype=a.dtype, chunks=(rows, *a.shape[1:]),
            fill_value=a.fill_value, dimension_names=a.metadata.dimension_names,
            compressors=WEIGHTS_CODEC if name in WEIGHT_ARRAYS else a.compressors,
            attributes=dict(a.attrs))
        step = max(rows, _COPY_ROWS // rows * rows)
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            new[lo:hi] = (store.read_rows_of(name, lo, hi) if name in ARRAY_NAMES
                          else np.asarray(a[lo:hi]))
    if TABLES in src:
        for name, a in sorted(src[TABLES].arrays()):
            root.require_group(TABLES).create_array(
                name, shape=a.shape, dtype=a.dtype, chunks=a.chunks, fill_value=a.fill_value,
                compressors=a.compressors, dimension_names=a.metadata.dimension_names,
                attributes=dict(a.attrs))[...] = a[...]
    _write_split(store.path, out, n)
    _write_card(store.path, out)


def _write_split(src: Path, out: Path, n: int) -> None:
    """The tier's split, by the store's scheme (a net's split depends on its id alone)."""
    from mlds_jax.analysis.splits import SPLIT_DIR, write_splits

    meta = src / SPLIT_DIR / "splits.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        write_splits(out, n, seed=m["seed"], fractions=m["fractions"])


def _write_card(src: Path, out: Path) -> None:
    """The card restated for the tier (counts, figures), dated as the store's card."""
    readme = src / "README.md"
    if not readme.is_file():
        return
    from mlds_jax.research.card import write_card
    from mlds_jax.research.reader import open_dataset

    found = re.search(r"card written (\d{4})-(\d{2})-(\d{2})", readme.read_text())
    if found is None:  # a card of another form: shipped as it is
        shutil.copy(readme, out / "README.md")
        if (src / "figures").is_dir():
            shutil.copytree(src / "figures", out / "figures")
        return
    import datetime

    write_card(open_dataset(out), date=datetime.date(*(int(g) for g in found.groups())))


def _check_tier(path: Path, n: int) -> None:
    """The tier store reads back whole: every chunk decodes, every row matches its crc32c."""
    from mlds_jax.store.verify import verify

    report = verify(path)
    if not report.ok or report.n_nets != n or report.rows_checksummed < min(n, 1):
        first = report.problems[0] if report.problems else f"{report.n_nets} rows"
        raise ReleaseError(f"the release of {n} nets did not read back: {first}")


def write_zip(src_dir: Path, target: Path) -> None:
    """Every file under ``src_dir`` into the zip ``target``, reproducibly: sorted paths
    relative to ``src_dir``, stored (not deflated), fixed time and permissions."""
    files = sorted(p.relative_to(src_dir).as_posix() for p in src_dir.rglob("*") if p.is_file())
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for rel in files:
            info = zipfile.ZipInfo(rel, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3  # unix, so that the permissions below are read
            info.external_attr = 0o644 << 16
            info.file_size = (src_dir / rel).stat().st_size
            with open(src_dir / rel, "rb") as f, zf.open(info, "w") as dst:
                shutil.copyfileobj(f, dst, 1 << 20)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _update_sums(out_dir: Path, sums: dict[str, str]) -> None:
    """``SHA256SUMS`` in ``sha256sum``'s format: the archives written now replace their old
    lines, others' lines stay."""
    from mlds_jax.store.schema import write_atomic

    path = out_dir / SUMS
    old = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            digest, sep, name = line.partition("  ")
            if sep:
                old[name] = digest
    old.update(sums)
    write_atomic(path, "".join(f"{d}  {name}\n" for name, d in sorted(old.items())).encode())


def unpack(archive, out) -> Path:
    """Extract the release archive ``archive`` into a store at ``out`` (which must not exist
    or be empty) and pack its weights (``mlds pack``) so that ``weights_memmap()`` works."""
    from mlds_jax.store.rawrows import pack

    archive, out = Path(archive), Path(out)
    if not archive.is_file() or not zipfile.is_zipfile(archive):
        raise ReleaseError(f"{archive} is not a release archive (.zarr.zip)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReleaseError(f"{out} exists; give a new directory for the unpacked store")
    DatasetStore.open(archive)  # it is a store
    build = creating_dir(out)
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rel = Path(info.filename)
                if rel.is_absolute() or ".." in rel.parts:
                    raise ReleaseError(f"{archive} holds an unsafe path {info.filename!r}")
            zf.extractall(build)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(build, out)
    except OSError as e:
        raise ReleaseError(f"cannot unpack {archive} into {out}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(build, ignore_errors=True)
    pack(out)
    return out
