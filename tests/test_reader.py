"""Reading a store (mlds_jax/research/reader.py, mlds_jax/store/rawrows.py): fast reads
and memory maps equal zarr's reads, packing gives one zero-copy [N, P] map that zarr and
tensorstore still read, the metadata table, selections, and to_torch against the JAX model."""

import dataclasses
import shutil

import jax
import numpy as np
import pytest
import zarr

import mlds_jax
from mlds_jax.config.sections import SWEEPABLE
from mlds_jax.research.reader import SelectionError
from mlds_jax.store.dataset_store import DatasetStore
from mlds_jax.store.rawrows import pack
from mlds_jax.store.schema import StoreError
from mlds_jax.train import models
from tests.stores import build_store, plausible_rows, smoke_config

N = 30  # chunks of 4 rows: 8 chunks, the last one half full


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "s.zarr"
    build_store(path, n_nets=N, written=[i for i in range(N) if i not in (9, 10, 11, 29)])
    return path  # rows 8..11 share chunk 2; chunk 2 is partly pending


def test_load_weights_equals_zarr(store_path):
    ds = mlds_jax.open_dataset(store_path)
    everything = np.asarray(ds.weights[:])
    np.testing.assert_array_equal(ds.load_weights(), everything)
    ids = np.array([17, 3, 3, 28, 0, 9, 29])  # any order, repeats, pending rows
    np.testing.assert_array_equal(ds.load_weights(ids), everything[ids])
    np.testing.assert_array_equal(ds.load_weights([5]), everything[[5]])
    assert np.isnan(ds.load_weights([29])).all()  # never written: the fill value
    np.testing.assert_array_equal(ds.load_weights(ids, initial=True),
                                  np.asarray(ds.initial_weights[:])[ids])
    assert ds.load_weights(np.zeros(0, np.int64)).shape == (0, ds.n_params)
    with pytest.raises(IndexError, match=r"\[0, 30\)"):
        ds.load_weights([30])
    tree = ds.net(6)
    np.testing.assert_array_equal(tree["head_3"]["bias"], everything[6, -8:])
    assert ds.state_dict(6)["rnn.weight_hh_l0"].shape == (36, 12)


def test_chunk_memmaps_and_refused_single_memmap(store_path):
    ds = mlds_jax.open_dataset(store_path)
    maps = ds.chunk_memmaps()
    assert ds.chunk_rows == 4 and len(maps) == 8
    everything = np.asarray(ds.weights[:])
    for i, m in enumerate(maps):
        assert isinstance(m, np.memmap) and m.shape == (min(4, N - 4 * i), ds.n_params)
        np.testing.assert_array_equal(m, everything[4 * i : 4 * i + len(m)])
    with pytest.raises(StoreError, match="mlds pack") as err:
        ds.weights_memmap()
    assert "\n" not in str(err.value) and "8 chunk files of 4 rows" in str(err.value)


def test_pack_gives_one_zero_copy_memmap(store_path):
    ds = mlds_jax.open_dataset(store_path)
    before = {name: np.asarray(getattr(ds, name)[:]) for name in ("weights", "initial_weights")}
    assert pack(store_path) == ["weights", "initial_weights"]
    assert pack(store_path) == []  # already packed
    packed = mlds_jax.open_dataset(store_path)
    assert packed.store.packed
    for initial, name in ((False, "weights"), (True, "initial_weights")):
        m = packed.weights_memmap(initial=initial)
        assert isinstance(m, np.memmap) and m.shape == (N, packed.n_params)
        assert m.offset == 0 and str(m.filename).endswith(f"{name}/c/0/0")
        np.testing.assert_array_equal(m, before[name])
        np.testing.assert_array_equal(getattr(packed, name)[:], before[name])  # zarr
        np.testing.assert_array_equal(getattr(packed, name)[13], before[name][13])
    np.testing.assert_array_equal(packed.load_weights([29, 2]), before["weights"][[29, 2]])
    many = np.r_[np.arange(N)[::-1], 3, 3]  # more rows than a chunk: one mapping
    np.testing.assert_array_equal(packed.load_weights(many), before["weights"][many])
    assert [p.name for p in store_path.iterdir() if p.name.startswith(".")] == []

    ts = pytest.importorskip("tensorstore")  # an independent zarr v3 reader of the shard
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(store_path / "weights")}}
    np.testing.assert_array_equal(ts.open(spec, read=True).result().read().result(),
                                  before["weights"])

    # A packed store is for reading: writing or extending it says how to undo the packing.
    cfg = smoke_config()
    from mlds_jax import generate as gen
    with pytest.raises(StoreError, match="--unpack"):
        gen.open_store(cfg, store_path, n_nets=N + 4)
    store = gen.open_store(cfg, store_path, n_nets=N)  # same size: fine, nothing to do
    with pytest.raises(StoreError, match="--unpack"):
        store.write_rows([29], **plausible_rows(cfg, [29]))

    assert pack(store_path, unpack=True) == ["weights", "initial_weights"]
    store = gen.open_store(cfg, store_path, n_nets=N + 4)
    store.write_rows([29, 31], **plausible_rows(cfg, [29, 31], seed=3))
    again = mlds_jax.open_dataset(store_path)
    assert not again.store.packed
    np.testing.assert_array_equal(again.load_weights(np.arange(29)), before["weights"][:29])
    np.testing.assert_array_equal(again.load_weights([29, 31]),
                                  plausible_rows(cfg, [29, 31], seed=3)["weights"])


def test_single_chunk_store_maps_without_pack(tmp_path):
    build_store(tmp_path / "s.zarr", n_nets=4, written=[0, 1, 2])
    ds = mlds_jax.open_dataset(tmp_path / "s.zarr")
    m = ds.weights_memmap()
    assert isinstance(m, np.memmap) and m.shape == (4, ds.n_params)
    np.testing.assert_array_equal(m, ds.weights[:])


def test_interrupted_pack_names_the_way_back(store_path):
    shutil.move(store_path / "weights", store_path / ".weights.old")  # killed between renames
    with pytest.raises(StoreError, match=r"rename that back"):
        mlds_jax.open_dataset(store_path)


def test_metadata_frame(store_path):
    ds = mlds_jax.open_dataset(store_path)
    df = ds.metadata()
    assert df.index.name == "net" and len(df) == N
    assert list(df.columns) == ["task", "task_name", "seed", "status", "status_name", "epochs",
                                "seq_steps", "val_bit_accuracy", "val_worst_pin_accuracy",
                                "val_sequences_right", *SWEEPABLE]
    status = np.asarray(ds.status[:])
    np.testing.assert_array_equal(df["status"].to_numpy(), status)
    np.testing.assert_array_equal(df["task"].to_numpy(), np.arange(N) % 5)  # pending: planned
    np.testing.assert_array_equal(df["epochs"].to_numpy(), ds.epochs[:])
    assert df.loc[9, "status_name"] == "pending" and df.loc[9, "task_name"] == "ParityMachine"
    assert df.loc[7, "status_name"] == "diverged"
    assert list(df["task_name"].cat.categories) == ds.task_names
    assert (df.groupby("task_name", observed=True).size() == 6).all()
    assert np.isnan(df.loc[10, "val_bit_accuracy"])


def test_select(store_path):
    ds = mlds_jax.open_dataset(store_path)
    status = np.asarray(ds.status[:])
    assert list(ds.select("all")) == list(range(N))
    assert list(ds.select("0:4")) == [0, 1, 2, 3]
    assert list(ds.select("1,5,9")) == [1, 5, 9]
    assert list(ds.select("3,20:30:5,1")) == [1, 3, 20, 25]
    assert list(ds.select("25:")) == list(range(25, 30))
    assert list(ds.select("task=ParityMachine")) == list(range(4, N, 5))
    assert list(ds.select("task=4")) == list(range(4, N, 5))
    assert list(ds.select("task=0,SingleInvertMachine&0:10")) == [0, 1, 5, 6]
    assert list(ds.select("status=pending")) == [9, 10, 11, 29]
    assert list(ds.select("status=finished")) == list(np.flatnonzero(status > 0))
    conv = ds.select("task=ParityMachine&status=converged")
    assert list(conv) == [i for i in range(4, N, 5) if status[i] == 1]
    assert list(ds.select(task="ParityMachine", status=1)) == list(conv)
    assert ds.select(status="diverged").dtype == np.int64
    assert list(ds.select(task=[2, 3], status=["capped", "diverged"])) == [
        i for i in range(N) if i % 5 in (2, 3) and status[i] in (2, 3)]


@pytest.mark.parametrize("spec, needle", [
    ("0:31", "net 30 in '0:31' does not exist"),
    ("45", "does not exist"),
    ("task=Nope", "unknown task 'Nope'"),
    ("task=9", "unknown task '9'"),
    ("status=great", "unknown status 'great'"),
    ("colour=red", "unknown selection key 'colour'"),
    ("1-5", "cannot read '1-5'"),
    ("5:2", "ends before it starts"),
    ("0:10:0", "positive step"),
    ("0:5&", "empty term"),
    ("", "empty selection"),
])
def test_bad_selection_is_one_line(store_path, spec, needle):
    ds = mlds_jax.open_dataset(store_path)
    with pytest.raises(SelectionError) as err:
        ds.select(spec)
    assert needle in str(err.value) and "\n" not in str(err.value)


# ---- to_torch against the JAX model --------------------------------------------------------


def _store_with_net(path, cfg, seed):
    """A store whose row 0 holds random weights for `cfg`'s network (uniform in +-0.8:
    large enough to drive every nonlinearity off its linear part); returns its pytree."""
    layout = models.param_layout(cfg.network)
    flat = np.random.default_rng(seed).uniform(-0.8, 0.8, models.num_params(cfg.network))
    flat = flat.astype(np.float32)
    from mlds_jax import generate as gen
    store = gen.open_store(cfg, path, n_nets=5)
    rows = plausible_rows(cfg, [0])
    rows["weights"] = flat[None, :]
    store.write_rows([0], **rows)
    return models.unflatten_params(flat, layout)


@pytest.mark.parametrize("network", [
    None,  # the DS1 network: 4-layer GRU, tanh head
    dict(cell="lstm", hidden_size=7, num_layers=2, head_sizes=(5,), activation="gelu"),
    dict(cell="gru", hidden_size=6, num_layers=1, head_sizes=(), activation="relu"),
])
def test_to_torch_matches_jax(tmp_path, network):
    torch = pytest.importorskip("torch")
    cfg = smoke_config()
    if network:
        cfg = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network, **network))
    params = _store_with_net(tmp_path / "s.zarr", cfg, seed=3)
    ds = mlds_jax.open_dataset(tmp_path / "s.zarr")
    module = ds.to_torch(0)
    assert isinstance(module, torch.nn.Module) and not module.training
    xs = np.random.default_rng(0).integers(0, 2, (3, 24, cfg.network.input_size)).astype(
        np.float32)
    want = np.asarray(jax.jit(jax.vmap(lambda x: models.apply(cfg.network, params, x)))(xs))
    with torch.no_grad():
        got = module(torch.from_numpy(xs)).numpy()
        one = module(torch.from_numpy(xs[1])).numpy()  # unbatched (T, I)
    assert got.shape == (3, 24, cfg.network.output_size)
    assert np.abs(got - want).max() <= 1e-5
    assert np.abs(one - want[1]).max() <= 1e-5
    # the reference module of the model tests agrees on the same flat vector
    from tests.torch_reference import torch_net
    ref = torch_net(cfg.network, ds.load_weights([0])[0])
    with torch.no_grad():
        assert np.abs(ref(torch.from_numpy(xs)).numpy() - got).max() <= 1e-6


def test_old_store_without_checksums(tmp_path):
    """A store made before row checksums and chunk crc32c existed still opens, reads and
    verifies; reopening it for writing adds the checksums array for new rows."""
    path = tmp_path / "old.zarr"
    store, cfg, ids = build_store(path, n_nets=12, written=[0, 1, 2])
    shutil.rmtree(path / "checksums")
    ds = mlds_jax.open_dataset(path)
    assert ds.store.row_checksums() is None
    np.testing.assert_array_equal(ds.load_weights([0, 2]), ds.weights.oindex[[0, 2]])
    from mlds_jax import generate as gen
    store = gen.open_store(cfg, path, n_nets=12)
    store.write_rows([5], **plausible_rows(cfg, [5]))
    crcs = DatasetStore.open(path).row_checksums()
    assert (crcs[[0, 1, 2]] == -1).all() and (crcs[5] != -1).all()
    assert isinstance(zarr.open_group(str(path), mode="r")["checksums/rows"], zarr.Array)
