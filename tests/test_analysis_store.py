"""`mlds analyze` and the split/Dataset tools on small hand-built stores: weights with a
planted task signal (and DS2 twins with a planted trigger shift) against weights without
any; splits disjoint and stable as the store grows; the Dataset yields exactly the store's
rows."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mlds_jax import generate as gen
from mlds_jax.analysis import WeightDataset, WeightRows, iterate_batches, load_split, split_of
from mlds_jax.analysis.splits import SPLITS, TRAIN
from mlds_jax.analysis.symmetry import Symmetries
from mlds_jax.cli import main
from mlds_jax.research.reader import open_dataset
from mlds_jax.store.rawrows import pack
from tests.stores import build_store, plausible_rows, smoke_config

N = 80


def _store(path, *, signal=True, shift=None, seed=0):
    """N finished nets (id 7 diverged). signal: weights cluster by task (plausible_rows);
    else pure noise. shift: the same store's rows moved by shift * a fixed direction (DS2)."""
    cfg = smoke_config()
    store = gen.open_store(cfg, path, n_nets=N)
    ids = np.arange(N)
    rows = plausible_rows(cfg, ids, seed)
    if not signal:
        noise = np.random.default_rng(5).standard_normal(rows["weights"].shape).astype(np.float32)
        rows["weights"] = np.where(np.isnan(rows["weights"]), np.nan, noise)
    if shift is not None:
        direction = np.random.default_rng(6).standard_normal(rows["weights"].shape[1])
        rows["weights"] = (rows["weights"] + shift * direction).astype(np.float32)
    store.write_rows(ids, **rows)
    return path


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    d = tmp_path_factory.mktemp("analyze")
    ds1 = _store(d / "ds1.zarr")
    ds2 = _store(d / "ds2.zarr", shift=0.3)
    result = CliRunner().invoke(main, ["analyze", str(ds1), "--paired", str(ds2)])
    assert result.exit_code == 0, result.output
    return ds1, json.loads((ds1 / "analysis" / "analysis.json").read_text())


def test_planted_task_signal_is_read_from_the_weights(analyzed):
    _, r = analyzed
    assert r["split"]["nets"] == N - 1  # the diverged net is left out
    assert sum(r["split"]["counts"].values()) == N - 1
    ident = r["task_identification"]
    for enc in ("raw/linear", "canonical/linear", "stats/gbt", "stats/linear"):
        assert ident[enc]["accuracy"] >= 0.9, (enc, ident[enc])
    assert ident["initial/linear"]["accuracy"] <= 0.5  # the initial weights carry no task
    c = r["clustering"]["raw"]
    assert c["kmeans_ari"] > 0.9 and c["nn1_accuracy"] > 0.95 and c["distance_ratio"] < 0.9


def test_planted_trigger_shift_is_detected(analyzed):
    _, r = analyzed
    p = r["pairs"]
    assert p["n_pairs"] == N - 1 and p["max_initial_difference"] == 0.0
    assert p["detection"]["raw/linear/twin"]["roc_auc"] > 0.99
    assert p["divergence"]["all"]["ratio_median"] < 1


def test_analysis_ships_splits_and_updates_the_card(analyzed):
    path, r = analyzed
    split = np.load(path / "analysis" / "split.npy")
    np.testing.assert_array_equal(split, split_of(np.arange(N)))
    norms = np.load(path / "analysis" / "normalization.npz")
    assert norms["raw_mean"].shape == norms["canonical_std"].shape == (4364,)
    card = (path / "README.md").read_text()
    assert "## Weight-space analysis" in card and "raw/linear" in card
    assert (path / "analysis" / "analysis_projection.png").stat().st_size > 1000
    from mlds_jax.store.verify import verify

    report = verify(path)  # what analyze adds does not disturb the store
    assert report.ok, [str(p) for p in report.problems]


def test_no_signal_gives_chance(tmp_path):
    """The same path from the store (encodings of the finished nets, fixed split) on weights
    without any task signal: every probe at chance."""
    from mlds_jax.analysis import classify, clustering_scores
    from mlds_jax.analysis.report import _usable, encodings

    ds = open_dataset(_store(tmp_path / "noise.zarr", signal=False))
    ids = _usable(ds)
    task, split = ds.tasks()[ids], split_of(ids)
    enc = encodings(ds, ids, log=lambda *_: None)
    for name, model in (("raw", "linear"), ("canonical", "linear"), ("stats", "gbt")):
        r = classify(enc[name], task, split, model)
        assert r["ci95"][0] <= 0.2 <= r["ci95"][1] and r["accuracy"] <= 0.5, (name, r)
    assert abs(clustering_scores(enc["raw"], task)["kmeans_ari"]) < 0.1


def test_splits_disjoint_and_stable_as_the_store_grows(tmp_path):
    store, cfg, _ = build_store(tmp_path / "s.zarr", n_nets=30)
    small = load_split(open_dataset(tmp_path / "s.zarr"))
    gen.open_store(cfg, tmp_path / "s.zarr", n_nets=400)  # extend to a bigger tier
    big = load_split(open_dataset(tmp_path / "s.zarr"))
    assert len(big) == 400
    np.testing.assert_array_equal(big[:30], small)
    assert set(np.unique(big)) == {0, 1, 2}  # each net in exactly one split
    shares = np.bincount(big, minlength=3) / 400
    np.testing.assert_allclose(shares, [0.7, 0.1, 0.2], atol=0.06)
    assert np.any(split_of(np.arange(400), seed=1) != big)  # the seed matters


@pytest.mark.parametrize("packed", [False, True])
def test_dataset_yields_exactly_the_store_rows(tmp_path, packed):
    path = tmp_path / "d.zarr"
    build_store(path, n_nets=30, written=np.arange(30))
    if packed:
        pack(path)
    ds = open_dataset(path)
    if packed:
        assert ds.weights_memmap().shape == (30, ds.n_params)
    finished = np.flatnonzero(np.isfinite(ds.load_weights()).all(axis=1))
    seen = []
    for name in SPLITS:
        rows = WeightRows(ds, name)
        np.testing.assert_array_equal(rows.rows(np.arange(len(rows))), ds.load_weights(rows.ids))
        np.testing.assert_array_equal(rows.labels, ds.tasks()[rows.ids])
        seen.append(rows.ids)
        torch_ds = WeightDataset(path, name)
        for i in range(len(torch_ds)):
            x, y = torch_ds[i]
            np.testing.assert_array_equal(x.numpy(), ds.load_weights([rows.ids[i]])[0])
            assert int(y) == ds.tasks()[rows.ids[i]]
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), finished)
    # One epoch of batches covers the split once; normalised train rows have mean 0.
    batches = list(iterate_batches(ds, "train", 4, normalize=True, seed=1))
    x = np.concatenate([b[0] for b in batches])
    assert len(x) == len(WeightRows(ds, "train"))
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-4)
    canon = WeightRows(ds, "test", canonical=True, label="epochs", in_memory=packed)
    sym = Symmetries(ds.network, ds.layout)
    np.testing.assert_array_equal(canon.rows(np.arange(len(canon))),
                                  sym.canonicalize(ds.load_weights(canon.ids)))
    np.testing.assert_array_equal(canon.labels, np.asarray(ds.epochs[:])[canon.ids])
    assert TRAIN == 0


def test_cli_errors_are_one_line(tmp_path):
    path = _store(tmp_path / "s.zarr")
    result = CliRunner().invoke(main, ["analyze", str(path), "--nets", "900:1000"])
    assert result.exit_code == 1 and "does not exist" in result.output
    result = CliRunner().invoke(main, ["analyze", str(tmp_path / "missing.zarr")])
    assert result.exit_code == 1 and result.output.startswith("error:")
