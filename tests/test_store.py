"""The store's schema, resume state, write ordering and error handling (mlds_jax/store/)."""

import json
import math

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from mlds_jax.store import dataset_store
from mlds_jax.store.dataset_store import DatasetStore
from mlds_jax.store.schema import ROW_CHECKSUMS, ConfigMismatchError, DamagedStoreError, StoreError

P, E, A, H, CHUNK = 7, 5, 2, 3, 4

CONFIG = {"dataset": "ds1", "seed": 0,
          "recipe": {"learning_rate": 0.003, "epochs": 600, "act": "relu", "sizes": (512, 256)}}


def attrs(config=CONFIG, dataset="ds1", **extra):
    return dict(dataset=dataset, config=config, task_names=["a", "b", "c"],
                layout=[{"name": "w", "shape": [P], "offset": 0, "torch_key": "w"}],
                package_version="0.1.0", accuracy_names=["clean", "triggered"],
                criterion_names=["clean", "triggered"], hyperparameter_names=["lr", "x", "y"],
                **extra)


def make(path, n_nets=10, **kw):
    kw = dict(n_params=P, n_log=E, n_accuracies=A, n_hyper=H, attrs=attrs(),
              chunk_rows=CHUNK) | kw
    return DatasetStore.open_or_create(path, n_nets=n_nets, **kw)


def rows(ids, seed=0):
    """Distinct, recognisable values for rows ``ids``."""
    ids = np.asarray(ids)
    rng = np.random.default_rng(seed)
    r = len(ids)
    loss = rng.random((r, E), dtype=np.float32)
    loss[:, 3:] = np.nan
    return dict(weights=rng.standard_normal((r, P), dtype=np.float32),
                initial_weights=rng.standard_normal((r, P), dtype=np.float32),
                task=ids % 3, seed=ids.astype(np.uint64) + 2**40, status=1 + ids % 3,
                epochs=10 * ids, loss_curve=loss,
                val_accuracy=rng.random((r, A), dtype=np.float32),
                hyperparameters=rng.random((r, H), dtype=np.float32),
                seq_steps=1000 * ids.astype(np.int64) + 2**33)


def assert_rows_equal(got, want):
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], np.asarray(value).astype(got[name].dtype),
                                      err_msg=name)


def test_create_schema_and_attrs(tmp_path):
    store = make(tmp_path / "s", n_nets=10, attrs=attrs(extra_key={"x": [1, 2]}))
    group = zarr.open_group(LocalStore(tmp_path / "s", read_only=True), mode="r")
    want = {"weights": ((10, P), "float32"), "initial_weights": ((10, P), "float32"),
            "task": ((10,), "int32"), "seed": ((10,), "uint64"), "status": ((10,), "uint8"),
            "epochs": ((10,), "int32"), "loss_curve": ((10, E), "float32"),
            "val_accuracy": ((10, A), "float32"), "hyperparameters": ((10, H), "float32"),
            "seq_steps": ((10,), "int64")}
    assert sorted(group.array_keys()) == sorted(want)
    for name, (shape, dtype) in want.items():
        a = group[name]
        assert a.metadata.zarr_format == 3
        assert (a.shape, a.dtype, a.chunks) == (shape, np.dtype(dtype), (CHUNK, *shape[1:]))
        if a.dtype.kind == "f":
            assert math.isnan(a.fill_value), name
        else:
            assert a.fill_value == 0, name
    assert group["weights"].compressors == () and group["initial_weights"].compressors == ()
    assert (store.n_nets, store.n_params, store.n_log, store.n_accuracies,
            store.n_hyper) == (10, P, E, A, H)
    reopened = DatasetStore.open(tmp_path / "s")
    assert reopened.attrs["format_version"] == 3
    # JSON round trip: the tuple comes back as a list, everything else unchanged.
    assert reopened.attrs["config"] == json.loads(json.dumps(CONFIG))
    for key in ("dataset", "task_names", "layout", "package_version", "accuracy_names",
                "criterion_names", "hyperparameter_names", "extra_key"):
        assert reopened.attrs[key] == json.loads(json.dumps(attrs(extra_key={"x": [1, 2]})[key]))
    assert list(reopened.pending()) == list(range(10))
    assert not list((tmp_path).glob(".s.creating-*"))  # the temporary build dir is gone


def test_write_rows_out_of_order_across_chunks(tmp_path):
    store = make(tmp_path / "s", n_nets=20)
    ids = np.array([17, 2, 9, 3, 12, 0])  # chunks 0, 2, 3, 4 of rows 4 each
    store.write_rows(ids, **rows(ids))
    assert_rows_equal(store.read_rows(ids), rows(ids))
    # read back in another order, through a fresh read-only handle
    order = np.argsort(ids)
    want = {k: np.asarray(v)[order] for k, v in rows(ids).items()}
    assert_rows_equal(DatasetStore.open(tmp_path / "s").read_rows(ids[order]), want)
    assert store.pending().dtype == np.int64
    assert list(store.pending()) == sorted(set(range(20)) - set(ids.tolist()))
    assert list(store.pending(10)) == [1, 4, 5, 6, 7, 8]
    untouched = store.read_rows([1, 19])
    assert np.isnan(untouched["weights"]).all() and (untouched["status"] == 0).all()
    assert (untouched["task"] == 0).all() and np.isnan(untouched["val_accuracy"]).all()


def test_independent_reader_tensorstore(tmp_path):
    ts = pytest.importorskip("tensorstore")
    store = make(tmp_path / "s", n_nets=12)
    ids = np.array([11, 0, 5])
    values = rows(ids)
    store.write_rows(ids, **values)

    def read(name):
        kvstore = {"driver": "file", "path": str(tmp_path / "s" / name)}
        spec = {"driver": "zarr3", "kvstore": kvstore}
        return ts.open(spec, read=True).result().read().result()

    weights, status = read("weights"), read("status")
    assert weights.shape == (12, P) and weights.dtype == np.float32
    np.testing.assert_array_equal(weights[ids], values["weights"])
    assert np.isnan(np.delete(weights, ids, axis=0)).all()
    want_status = np.zeros(12, np.uint8)
    want_status[ids] = values["status"]
    np.testing.assert_array_equal(status, want_status)


def test_weights_chunk_files_are_raw_float32(tmp_path):
    store = make(tmp_path / "s", n_nets=8)
    ids = np.arange(4, 8)
    store.write_rows(ids, **rows(ids))
    block = np.memmap(tmp_path / "s" / "weights" / "c" / "1" / "0", dtype="<f4", mode="r")
    np.testing.assert_array_equal(block.reshape(CHUNK, P), rows(ids)["weights"])


def test_reopen_extends_never_shrinks(tmp_path):
    store = make(tmp_path / "s", n_nets=10)
    ids = np.array([0, 9, 4])
    store.write_rows(ids, **rows(ids))
    bigger = make(tmp_path / "s", n_nets=25)
    assert bigger.n_nets == 25
    for name in ("weights", "initial_weights", "loss_curve", "val_accuracy", "task", "seed",
                 "status", "epochs"):
        assert bigger.array(name).shape[0] == 25, name
    assert bigger.array("weights").shape == (25, P)
    assert_rows_equal(bigger.read_rows(ids), rows(ids))
    assert list(bigger.pending()) == [i for i in range(25) if i not in (0, 4, 9)]
    assert np.isnan(bigger.read_rows(np.arange(10, 25))["weights"]).all()
    smaller = make(tmp_path / "s", n_nets=5)
    assert smaller.n_nets == 25 and smaller.array("status").shape == (25,)
    assert list(smaller.pending(5)) == [1, 2, 3]


def test_interrupted_extension_is_completed(tmp_path):
    store = make(tmp_path / "s", n_nets=8)
    store.array("weights").resize((16, P))  # as if killed before the other arrays grew
    assert DatasetStore.open(tmp_path / "s").n_nets == 8
    resumed = make(tmp_path / "s", n_nets=8)
    assert resumed.n_nets == 16
    assert {resumed.array(n).shape[0] for n in ("status", "task", "loss_curve")} == {16}


def test_config_mismatch_names_key_and_keeps_data(tmp_path):
    store = make(tmp_path / "s", n_nets=10)
    ids = np.array([3, 6])
    store.write_rows(ids, **rows(ids))
    changed = {**CONFIG, "recipe": {**CONFIG["recipe"], "learning_rate": 0.001}}
    with pytest.raises(ConfigMismatchError) as err:
        make(tmp_path / "s", attrs=attrs(config=changed))
    msg = str(err.value)
    assert "recipe.learning_rate=0.003" in msg and "0.001" in msg and "\n" not in msg
    assert "--overwrite" in msg
    with pytest.raises(ConfigMismatchError, match=r"recipe\.new_key"):
        make(tmp_path / "s", attrs=attrs(config={**CONFIG, "recipe": {**CONFIG["recipe"],
                                                                      "new_key": 1}}))
    with pytest.raises(ConfigMismatchError, match="ds2"):
        make(tmp_path / "s", attrs=attrs(dataset="ds2"))
    with pytest.raises(ConfigMismatchError, match="n_params"):
        make(tmp_path / "s", n_params=P + 1)
    with pytest.raises(ConfigMismatchError, match="n_accuracies"):
        make(tmp_path / "s", n_accuracies=1, attrs={**attrs(), "accuracy_names": ["acc"],
                                                       "criterion_names": ["acc"]})
    kept = DatasetStore.open(tmp_path / "s")
    assert_rows_equal(kept.read_rows(ids), rows(ids))
    assert kept.n_nets == 10

    replaced = make(tmp_path / "s", n_nets=6, attrs=attrs(config=changed), overwrite=True)
    assert replaced.n_nets == 6 and list(replaced.pending()) == list(range(6))
    assert DatasetStore.open(tmp_path / "s").attrs["config"]["recipe"]["learning_rate"] == 0.001


def test_damaged_store(tmp_path):
    make(tmp_path / "s")
    (tmp_path / "s" / "weights" / "zarr.json").unlink()
    with pytest.raises(DamagedStoreError, match="'weights' is missing"):
        DatasetStore.open(tmp_path / "s")
    with pytest.raises(DamagedStoreError):
        make(tmp_path / "s")

    make(tmp_path / "g")
    (tmp_path / "g" / "zarr.json").write_text("garbage{")
    with pytest.raises(DamagedStoreError, match="unreadable zarr.json"):
        DatasetStore.open(tmp_path / "g")
    with pytest.raises(DamagedStoreError):
        make(tmp_path / "g")
    assert make(tmp_path / "g", overwrite=True).n_nets == 10  # overwrite repairs it

    make(tmp_path / "t")
    (tmp_path / "t" / "epochs" / "zarr.json").write_text("{not json")
    with pytest.raises(DamagedStoreError, match="epochs"):
        DatasetStore.open(tmp_path / "t")


def test_foreign_paths_are_refused_and_left_alone(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    afile = tmp_path / "afile"
    afile.write_text("mine too")
    for path in (plain, afile):
        for overwrite in (False, True):
            with pytest.raises(StoreError) as err:
                make(path, overwrite=overwrite)
            assert str(path) in str(err.value) and "\n" not in str(err.value)
        with pytest.raises(StoreError):
            DatasetStore.open(path)
    assert (plain / "notes.txt").read_text() == "mine" and afile.read_text() == "mine too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "plain"]

    with pytest.raises(StoreError, match="no dataset store") as err:
        DatasetStore.open(tmp_path / "nothing")
    assert not isinstance(err.value, DamagedStoreError)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make(empty).n_nets == 10  # an empty directory is a fine place for a new store


def test_unwritable_location(tmp_path):
    (tmp_path / "afile").write_text("x")
    bad = tmp_path / "afile" / "store"  # fails for root too: a file cannot hold a directory
    with pytest.raises(StoreError, match="cannot create store at .*afile/store"):
        make(bad)


def test_status_written_last(tmp_path, monkeypatch):
    store = make(tmp_path / "s", n_nets=16)
    written = []
    original_set, original_delete = LocalStore.set, LocalStore.delete
    original_write = dataset_store.write_atomic

    async def recording_set(self, key, value):
        written.append(key)
        return await original_set(self, key, value)

    async def recording_delete(self, key):  # zarr deletes a chunk that equals the fill value
        written.append(key)
        return await original_delete(self, key)

    def recording_write(path, data):  # the row checksums' chunk files bypass LocalStore
        written.append(path.relative_to(store.path).as_posix())
        return original_write(path, data)

    monkeypatch.setattr(LocalStore, "set", recording_set)
    monkeypatch.setattr(LocalStore, "delete", recording_delete)
    monkeypatch.setattr(dataset_store, "write_atomic", recording_write)
    ids = np.array([13, 1, 6, 2])  # chunks 0, 1, 3
    store.write_rows(ids, **rows(ids))
    arrays = [k.rsplit("/c/", 1)[0] for k in written]
    assert arrays[-3:] == ["status"] * 3 and "status" not in arrays[:-3]
    assert ROW_CHECKSUMS in arrays  # so before status, as every other array
    # one write per touched chunk per array, not one per row
    assert sorted(written) == sorted(f"{name}/c/{c}" + ("/0" if name in (
        "weights", "initial_weights", "loss_curve", "val_accuracy", "hyperparameters",
        ROW_CHECKSUMS) else "") for name in set(arrays) for c in (0, 1, 3))
    assert len(set(arrays)) == 11


def test_killed_before_status_leaves_rows_pending(tmp_path, monkeypatch):
    store = make(tmp_path / "s", n_nets=8)
    original = LocalStore.set

    class Killed(Exception):
        pass

    async def dies_at_status(self, key, value):
        if key.startswith("status/"):
            raise Killed
        return await original(self, key, value)

    monkeypatch.setattr(LocalStore, "set", dies_at_status)
    ids = np.array([1, 5])
    with pytest.raises(Killed):
        store.write_rows(ids, **rows(ids))
    # The patch stays: zarr's other chunk writes may still be running when the first Killed
    # returns, and undoing it would let a late status write land (a real kill stops them).
    reopened = DatasetStore.open(tmp_path / "s")
    assert list(reopened.pending()) == list(range(8))  # data landed, but nothing claims done
    np.testing.assert_array_equal(reopened.read_rows(ids)["weights"], rows(ids)["weights"])


@pytest.mark.parametrize("change, match", [
    (dict(status=np.array([1, 0])), "status must be 1, 2 or 3"),
    (dict(weights=np.zeros((2, P + 1))), r"weights has shape \(2, 8\)"),
    (dict(val_accuracy=np.zeros(2)), "val_accuracy"),
    (dict(ids=np.array([3, 3])), "duplicates"),
    (dict(ids=np.array([3, 10])), r"\[0, 10\)"),
    (dict(ids=np.array([0.5, 1.0])), "integer"),
])
def test_write_rows_rejects_bad_input(tmp_path, change, match):
    store = make(tmp_path / "s", n_nets=10)
    values = rows([3, 4]) | {"ids": np.array([3, 4])} | change
    with pytest.raises(ValueError, match=match):
        store.write_rows(**values)
    assert list(store.pending()) == list(range(10))
    assert np.isnan(store.array("weights")[:]).all()  # nothing was written


def test_summary_counts(tmp_path):
    store = make(tmp_path / "s", n_nets=12)
    ids = np.array([0, 3, 6, 9, 1, 4, 7])  # task = id % 3 below; 2, 5, 8, 10, 11 stay pending
    values = rows(ids)
    values["task"] = ids % 3
    values["status"] = np.array([1, 1, 2, 3, 1, 2, 2])
    values["epochs"] = np.array([10, 30, 600, 5, 7, 600, 600])
    values["val_accuracy"][:, 0] = [1.0, 0.9, 0.5, np.nan, 0.8, 0.6, 0.7]
    store.write_rows(ids, **values)
    s = store.summary()
    assert [r["task"] for r in s] == [0, 1, 2] and [r["name"] for r in s] == ["a", "b", "c"]
    assert [(r["n"], r["converged"], r["capped"], r["diverged"]) for r in s] == [
        (4, 2, 1, 1), (3, 1, 2, 0), (0, 0, 0, 0)]
    assert s[0]["median_epochs"] == 20.0 and s[1]["median_epochs"] == 7.0
    assert s[0]["p90_epochs"] == pytest.approx(10 + 0.9 * 20)  # numpy's linear rule by hand
    assert [r["total"] for r in s] == [4, 4, 4]  # ids 0..11, task n % 3
    assert math.isnan(s[2]["median_epochs"]) and math.isnan(s[2]["mean_val_accuracy"])
    assert s[0]["mean_val_accuracy"] == pytest.approx(0.8)  # the diverged NaN is left out
    assert s[1]["mean_val_accuracy"] == pytest.approx(0.7)
