"""`mlds release`: a released tier is the same prefix of the store, array for array (read back
with plain zarr-python and tensorstore, not with our reader); SHA256SUMS is what sha256sum
computes; the same store and tier give the same bytes; pending, oversized and damaged tiers
are refused in one line with nothing written; an archive reads in place and unpacks to a
memory-mappable store."""

import hashlib
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from zarr.storage import LocalStore, ZipStore

import mlds_jax
from mlds_jax.analysis.splits import split_of, write_splits
from mlds_jax.cli import main
from mlds_jax.research.card import write_card
from mlds_jax.release import release
from mlds_jax.store.schema import ROW_CHECKSUMS, StoreError
from mlds_jax.store.verify import verify
from tests.stores import ROW_ARRAYS, build_store

K = 5  # smoke tasks
N = 30  # store rows: 27 finished (tiers up to 5 nets per task), the last 3 pending
SPLIT_SEED = 3


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A store of plausible rows with a card and an analysis split, released as a user does:
    `mlds release s.zarr --tiers 2,5 --out rel`, from the directory that holds it."""
    root = tmp_path_factory.mktemp("release")
    build_store(root / "s.zarr", n_nets=N)
    write_card(mlds_jax.open_dataset(root / "s.zarr"))
    write_splits(root / "s.zarr", N, seed=SPLIT_SEED)
    proc = subprocess.run([sys.executable, "-m", "mlds_jax.cli", "release", "s.zarr",
                           "--tiers", "2,5", "--out", "rel"], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return root


def zip_group(path):
    return zarr.open_group(ZipStore(path, mode="r"), mode="r")


@pytest.mark.parametrize("tier", [2, 5])
def test_tier_is_the_prefix_of_the_store(source, tier):
    n = K * tier
    src = zarr.open_group(LocalStore(source / "s.zarr", read_only=True), mode="r")
    rel = zip_group(source / "rel" / f"ds1-smoke-{tier}.zarr.zip")
    assert dict(rel.attrs) == dict(src.attrs)
    for name in (*ROW_ARRAYS, ROW_CHECKSUMS):
        assert rel[name].shape == (n, *src[name].shape[1:]), name
        assert rel[name].dtype == src[name].dtype, name
        np.testing.assert_array_equal(rel[name][:], src[name][:n], err_msg=name)
    assert (rel["status"][:] != 0).all()


def test_sha256sums_are_what_sha256sum_says(source):
    rel = source / "rel"
    lines = (rel / "SHA256SUMS").read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == ["ds1-smoke-2.zarr.zip",
                                                       "ds1-smoke-5.zarr.zip"]
    for line in lines:
        digest, name = line.split("  ")
        assert digest == hashlib.sha256((rel / name).read_bytes()).hexdigest()
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=rel, capture_output=True,
                               text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.count(": OK") == 2


def test_two_releases_are_byte_identical(source, tmp_path):
    (again,) = release(source / "s.zarr", [5], tmp_path)
    first = source / "rel" / "ds1-smoke-5.zarr.zip"
    assert again.path.read_bytes() == first.read_bytes()
    with zipfile.ZipFile(first) as zf:
        names = zf.namelist()
        assert names == sorted(names) and "zarr.json" in names and "README.md" in names
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        assert not any(n.endswith("/") for n in names)
    # SHA256SUMS keeps the line of an archive written earlier
    release(source / "s.zarr", [2], tmp_path)
    assert len((tmp_path / "SHA256SUMS").read_text().splitlines()) == 2


def test_a_packed_store_releases_the_same_bytes(source, tmp_path):
    """`mlds pack` stores the weights as one shard; the archive holds plain chunks either way,
    so nothing outside the zip is needed and the bytes do not depend on the layout."""
    from mlds_jax.store.rawrows import pack

    shutil.copytree(source / "s.zarr", tmp_path / "p.zarr")
    assert pack(tmp_path / "p.zarr") == ["weights", "initial_weights"]
    (r,) = release(tmp_path / "p.zarr", [2], tmp_path / "rel")
    assert r.path.read_bytes() == (source / "rel" / "ds1-smoke-2.zarr.zip").read_bytes()


def test_read_in_place(source):
    path = source / "rel" / "ds1-smoke-5.zarr.zip"
    ds = mlds_jax.open_dataset(path)
    ref = mlds_jax.open_dataset(source / "s.zarr")
    assert len(ds) == 25
    np.testing.assert_array_equal(ds.load_weights([0, 24, 7]), ref.load_weights([0, 24, 7]))
    assert ds.state_dict(3).keys() == ref.state_dict(3).keys()
    from mlds_jax.analysis import load_split

    np.testing.assert_array_equal(load_split(ds), split_of(np.arange(25), SPLIT_SEED))
    with pytest.raises(StoreError, match=r"mlds release --unpack .* --out DIR") as e:
        ds.weights_memmap()
    assert "\n" not in str(e.value)
    assert verify(path).ok
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert "5/5" in result.output
    card = zipfile.ZipFile(path).read("README.md").decode()
    date = re.search(r"card written (\S+)", (source / "s.zarr" / "README.md").read_text())[1]
    assert "25 trained GRU networks" in card and f"card written {date}" in card


def test_tensorstore_reads_the_archive(source):
    ts = pytest.importorskip("tensorstore")
    path = source / "rel" / "ds1-smoke-5.zarr.zip"
    t = ts.open({"driver": "zarr3", "kvstore": f"file://{path.resolve()}|zip:weights/"},
                read=True).result()
    assert t.shape == (25, 4364)
    np.testing.assert_array_equal(t[24].read().result(),
                                  mlds_jax.open_dataset(source / "s.zarr").load_weights([24])[0])


def test_unpack_gives_a_memory_mappable_store(source, tmp_path):
    result = CliRunner().invoke(main, ["release", "--unpack",
                                       str(source / "rel" / "ds1-smoke-2.zarr.zip"),
                                       "--out", str(tmp_path / "u.zarr")])
    assert result.exit_code == 0, result.output
    ds = mlds_jax.open_dataset(tmp_path / "u.zarr")
    np.testing.assert_array_equal(ds.weights_memmap(),
                                  mlds_jax.open_dataset(source / "s.zarr").load_weights(
                                      np.arange(10)))
    assert verify(tmp_path / "u.zarr").ok


def refused(args, out):
    result = CliRunner().invoke(main, ["release", *args, "--out", str(out)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert not out.exists() or not any(out.iterdir())
    return lines[0]


def test_refuses_what_is_not_releasable(source, tmp_path):
    store = str(source / "s.zarr")
    assert "tier 6 is not finished: 3 of its 30 nets are pending (first: net 27)" in refused(
        [store, "--tiers", "2,6"], tmp_path / "a")
    assert "tier 7 needs 35 nets" in refused([store, "--tiers", "7"], tmp_path / "b")
    assert "already a release archive" in refused(
        [str(source / "rel" / "ds1-smoke-2.zarr.zip"), "--tiers", "1"], tmp_path / "c")
    damaged = tmp_path / "d.zarr"
    shutil.copytree(source / "s.zarr", damaged)
    chunk = damaged / "weights" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[100:104] = b"\x00\x00\x80\x7f"  # one value of net 4 becomes +inf
    chunk.write_bytes(bytes(raw))
    line = refused([str(damaged), "--tiers", "1"], tmp_path / "e")
    assert "fails `mlds verify`" in line and "net 4" in line


def test_ds3_automata_travel_with_the_tier(tmp_path):
    """The automata (the store's tables) are in the archive: a net's training data can be
    regenerated from the zip alone."""
    from mlds_jax.config.load import load_config

    cfg = load_config("ds3", ['name="ds3-tiny"', "automata.count=3", "network.hidden_size=4",
                              "network.num_layers=1", "network.head_sizes=[4]",
                              "recipe.max_epochs=40", "recipe.check_every=2"])
    build_store(tmp_path / "d3.zarr", n_nets=6, written=range(6), cfg=cfg)
    (r,) = release(tmp_path / "d3.zarr", [2], tmp_path / "rel")
    src, rel = mlds_jax.open_dataset(tmp_path / "d3.zarr"), mlds_jax.open_dataset(r.path)
    tables = src.store.tables()
    assert tables and rel.store.tables().keys() == tables.keys()
    for name, table in tables.items():
        np.testing.assert_array_equal(rel.store.tables()[name], table, err_msg=name)
    assert [a.transitions.shape for a in rel.automata()] == [
        a.transitions.shape for a in src.automata()]
