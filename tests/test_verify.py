"""`mlds verify` (mlds_jax/store/verify.py): flipped bytes on disk are found and named by row,
inconsistent rows are reported, a sound store passes; exit status and output format."""

import numpy as np
import pytest
from click.testing import CliRunner

from mlds_jax.cli import main
from mlds_jax.store.dataset_store import DatasetStore
from mlds_jax.store.rawrows import pack
from mlds_jax.store.verify import verify
from tests.stores import build_store, plausible_rows, smoke_config

P = 4364
ROW = P * 4  # bytes per weights row


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "s.zarr"
    build_store(path, n_nets=20)  # rows 0..16 finished (7 diverged), 17..19 pending
    return path


def run(path):
    result = CliRunner().invoke(main, ["verify", str(path)])
    lines = result.output.strip().splitlines()
    return result.exit_code, lines


def flip(path, offset, mask=0x01):
    """XOR one byte of a file in place (a low mantissa bit for float data: stays finite)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def test_sound_store_passes(store_path):
    report = verify(store_path)
    assert report.ok, [str(p) for p in report.problems]
    assert report.finished == 17 and report.rows_checksummed == 2 * 17
    code, lines = run(store_path)
    assert code == 0 and len(lines) == 1 and lines[0].startswith("OK ")
    assert "20 nets, 17 finished" in lines[0]


def test_flipped_weight_byte_names_the_row(store_path):
    flip(store_path / "weights" / "c" / "1" / "0", 1 * ROW + 4 * 100)  # net 5, param 100
    flip(store_path / "initial_weights" / "c" / "3" / "0", 2 * ROW + 4 * 7)  # net 14
    code, lines = run(store_path)
    assert code == 1
    assert lines[:-1] == [
        "weights: net 5 does not match the checksum recorded when it was written",
        "initial_weights: net 14 does not match the checksum recorded when it was written",
    ]
    assert lines[-1].startswith("FAILED ") and "2 problems in 2 nets" in lines[-1]


def test_flipped_byte_in_a_checksummed_chunk(store_path):
    chunk = store_path / "status" / "c" / "1"
    flip(chunk, len(chunk.read_bytes()) // 2, 0xFF)
    report = verify(store_path)
    assert [str(p) for p in report.problems] == [
        "status: nets 4..7 (chunk 1) unreadable: checksum mismatch"]
    assert report.bad_rows == [4, 5, 6, 7]
    curve = store_path / "loss_curve" / "c" / "4" / "0"
    flip(curve, 3)
    assert "loss_curve: nets 16..19 (chunk 4) unreadable: checksum mismatch" in [
        str(p) for p in verify(store_path).problems]


def test_truncated_chunk_file(store_path):
    chunk = store_path / "weights" / "c" / "2" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-10])
    code, lines = run(store_path)
    assert code == 1 and len(lines) == 2
    assert lines[0].startswith("weights: nets 8..11 (chunk 2) unreadable: DamagedStoreError")


def test_packed_store_flip(store_path):
    pack(store_path)
    assert verify(store_path).ok
    flip(store_path / "weights" / "c" / "0" / "0", 13 * ROW + 4 * 4000)
    assert [str(p) for p in verify(store_path).problems] == [
        "weights: net 13 does not match the checksum recorded when it was written"]
    shard = store_path / "initial_weights" / "c" / "0" / "0"
    flip(shard, len(shard.read_bytes()) - 10)  # inside the shard index
    assert any("initial_weights" in str(p) and "shard index" in str(p)
               for p in verify(store_path).problems)


def test_inconsistent_rows(tmp_path):
    path = tmp_path / "s.zarr"
    store, cfg, _ = build_store(path, n_nets=20, written=[])
    ids = np.arange(12)
    rows = plausible_rows(cfg, ids)
    cap = cfg.recipe.max_epochs

    def make(i, status, epochs, acc=None):
        rows["status"][i], rows["epochs"][i] = status, epochs
        rows["loss_curve"][i] = np.where(np.arange(cap) < epochs, 0.5, np.nan)
        rows["val_accuracy"][i] = (0.999 if status == 1 else 0.7) if acc is None else acc
        rows["weights"][i] = 0.1

    for i in range(12):
        make(i, 1, 8)
    make(0, 1, 0)  # converged after 0 epochs
    make(1, 2, 30)  # capped before the cap
    make(2, 1, cap + 2)  # past the cap
    make(3, 1, 8, acc=0.5)  # converged below the threshold
    rows["task"][4] = 1  # net 4 trains task 4
    rows["weights"][5, 17] = np.nan  # non-finite final weights of a converged net
    rows["initial_weights"][6, 0] = np.inf
    rows["loss_curve"][9, 5] = np.nan  # a hole in a finished curve
    make(10, 3, 4)  # diverged: NaN final weights are expected
    rows["weights"][10] = np.nan
    store.write_rows(ids, **rows)
    store.array("weights")[15] = np.ones(P, np.float32)  # data, but status still pending
    store.array("epochs")[16] = 5

    report = verify(path)
    got = [str(p) for p in report.problems]
    assert got == [
        "net 0: converged but trained 0 epochs",
        "net 1: capped after 30 epochs, not at the cap of 40",
        f"net 2: converged after {cap + 2} epochs, past the cap of {cap}",
        f"net 3: converged with val_worst_pin_accuracy 0.5000, below the threshold "
        f"{cfg.recipe.threshold}",
        "net 4: task 1, but net n trains task n mod 5 = 4",
        "weights: net 5 (converged) has non-finite values",
        "initial_weights: net 6 (converged) has non-finite values",
        "net 9: converged after 8 epochs, but its loss curve has 7 finite values",
        "net 15: pending but holds data (a write interrupted before its status; "
        "`mlds generate` redoes it)",
        "net 16: pending but holds data (a write interrupted before its status; "
        "`mlds generate` redoes it)",
    ]
    assert report.bad_rows == [0, 1, 2, 3, 4, 5, 6, 9, 15, 16]
    code, lines = run(path)
    assert code == 1 and lines[:-1] == got and lines[-1].startswith("FAILED")


def test_checksum_recorded_before_status(store_path, monkeypatch):
    """A write killed before its status leaves rows pending, their checksums recorded, and
    every finished row of the touched chunk still verifying."""
    from zarr.storage import LocalStore

    class Killed(Exception):
        pass

    original = LocalStore.set

    async def dies_at_status(self, key, value):
        if key.startswith("status/"):
            raise Killed
        return await original(self, key, value)

    store = DatasetStore.open(store_path, mode="r+")
    cfg_rows = plausible_rows(smoke_config(), [18], seed=5)
    monkeypatch.setattr(LocalStore, "set", dies_at_status)
    with pytest.raises(Killed):
        store.write_rows([18], **cfg_rows)
    monkeypatch.undo()
    crcs = DatasetStore.open(store_path).row_checksums()
    assert (crcs[18] != -1).all()
    report = verify(store_path)
    assert [str(p) for p in report.problems] == [
        "net 18: pending but holds data (a write interrupted before its status; "
        "`mlds generate` redoes it)"]


def test_missing_store_is_one_line(tmp_path):
    code, lines = run(tmp_path / "nothing")
    assert code == 1 and len(lines) == 1 and "nothing" in lines[0]
