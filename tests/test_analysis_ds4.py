"""Trojan detection for DS4 (`mlds analyze CLEAN --paired TROJANED`): the detector finds a
planted signal and reports chance without one, the folds keep twins together with exact
counts, the AUC and its interval agree with an independent reference, and the CLI runs on a
tiny pair of stores made by `mlds generate` from the repo root."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from mlds_jax.analysis import features, pairs  # noqa: E402
from mlds_jax.analysis.splits import TEST, TRAIN, VALIDATION, split_of  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = [{"name": "conv_0/weight", "shape": [4, 1, 3, 3], "offset": 0},
          {"name": "conv_0/bias", "shape": [4], "offset": 36},
          {"name": "head/weight", "shape": [2, 4], "offset": 40},
          {"name": "head/bias", "shape": [2], "offset": 48}]
P = 50


def _twins(n: int, shift: float, seed: int = 0):
    """(clean, trojaned) weight rows of n pairs: a shared per-pair base (the common init),
    independent training noise, and the trojaned twin's conv_0 weights scaled by 1 + shift
    (its variance statistic moves; nothing else does)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, P))
    clean = base + 0.3 * rng.normal(size=(n, P))
    trojan = base + 0.3 * rng.normal(size=(n, P))
    trojan[:, :36] *= 1 + shift
    return clean.astype(np.float32), trojan.astype(np.float32)


def _stats(w):
    return features.tensor_statistics(w, LAYOUT)[0]


def test_planted_signal_is_found_and_no_signal_reads_chance():
    n = 240
    split = split_of(np.arange(n))
    held_out = np.arange(n) % 3 == 2
    found = pairs.trojan_detection(*map(_stats, _twins(n, 0.5)), split, held_out, n_boot=300)
    for part in ("all", "seen", "held_out"):
        assert found[part]["roc_auc"] > 0.95, (part, found[part])
        assert found[part]["roc_auc_ci95"][0] > 0.85
        assert found[part]["accuracy"] > 0.85
    none = pairs.trojan_detection(*map(_stats, _twins(n, 0.0)), split, held_out, n_boot=300)
    for part in ("all", "seen", "held_out"):
        low, high = none[part]["roc_auc_ci95"]
        assert low < 0.5 < high, (part, none[part])
        assert 0.3 < none[part]["roc_auc"] < 0.7
        assert none[part]["chance"] == {"roc_auc": 0.5, "accuracy": 0.5}


def test_folds_keep_twins_together_with_exact_counts():
    n = 150
    ids = np.arange(1000, 1000 + n)  # any ids: the split is a function of the id alone
    split = split_of(ids)
    held_out = ids % 3 == 0
    out = pairs.trojan_detection(*map(_stats, _twins(n, 0.5)), split, held_out, n_boot=50)

    def count(mask):
        return 2 * int(mask.sum())  # each pair: its clean net and its trojaned twin

    tr, va, te = split == TRAIN, split == VALIDATION, split == TEST
    assert (out["all"]["n_train"], out["all"]["n_validation"], out["all"]["n_test"]) == (
        count(tr), count(va), count(te))
    seen = ~held_out
    assert (out["seen"]["n_train"], out["seen"]["n_validation"], out["seen"]["n_test"]) == (
        count(tr & seen), count(va & seen), count(te & seen))
    # The held-out test: the seen detector's training folds, every held-out pair as test.
    assert (out["held_out"]["n_train"], out["held_out"]["n_validation"],
            out["held_out"]["n_test"]) == (count(tr & seen), count(va & seen), count(held_out))
    for part in ("all", "seen", "held_out"):
        r = out[part]
        assert r["positives_test"] == r["test_pairs"] == r["n_test"] // 2
    # Twins share a fold: the split of pair i is the same whichever store it is read from.
    np.testing.assert_array_equal(split_of(ids), split_of(ids.copy()))


def test_grouped_cross_validation_scores_every_pair_once():
    n = 200
    ids = np.arange(n)
    held_out = ids % 3 == 2
    fold = pairs.pair_folds(ids)
    np.testing.assert_array_equal(fold, pairs.pair_folds(ids[::-1])[::-1])  # id alone
    assert set(fold.tolist()) == {0, 1, 2, 3, 4} and np.bincount(fold).min() >= 25
    found = pairs.cv_trojan_detection(*map(_stats, _twins(n, 0.5)), ids, held_out, n_boot=200)
    assert found["all"]["test_pairs"] == n and found["seen"]["test_pairs"] == (~held_out).sum()
    for part in ("all", "seen"):
        assert found[part]["roc_auc"] > 0.95 and found[part]["roc_auc_ci95"][0] > 0.9
    # Without a signal: near 0.5, not inside the interval every time (the interval counts
    # the resampling of pairs, not the refits; pooled out-of-fold AUCs of six null draws of
    # 200 pairs: 0.47-0.53, and seed 0's seen part 0.45 [0.40, 0.48]).
    for seed in (0, 1):
        none = pairs.cv_trojan_detection(*map(_stats, _twins(n, 0.0, seed)), ids, held_out,
                                         n_boot=50)
        for part in ("all", "seen"):
            assert abs(none[part]["roc_auc"] - 0.5) < 0.1, (part, none[part])


def test_empty_fold_is_reported_not_raised():
    split = np.full(10, TRAIN, np.int8)  # no validation or test pair
    out = pairs.trojan_detection(*map(_stats, _twins(10, 0.5)), split, np.zeros(10, bool))
    assert out["all"]["skipped"] and out["all"]["pairs"] == {"train": 10, "validation": 0,
                                                             "test": 0}
    assert "held_out" not in out


def test_roc_auc_and_pair_bootstrap_against_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 101)
    p = np.round(rng.normal(size=101) + y, 1)  # ties on purpose
    assert pairs.roc_auc(y, p) == pytest.approx(metrics.roc_auc_score(y, p), abs=1e-12)
    assert pairs.pair_bootstrap_auc(np.zeros(20), np.ones(20), n_boot=50) == [1.0, 1.0]
    clean, trojan = rng.normal(size=60), rng.normal(size=60) + 1.0
    low, high = pairs.pair_bootstrap_auc(clean, trojan, n_boot=500)
    point = pairs.roc_auc(np.r_[np.zeros(60), np.ones(60)], np.r_[clean, trojan])
    assert low < point < high and high - low < 0.4


def test_layer_slices_of_the_ds4_cnn_cover_every_weight_once():
    from mlds_jax.config.network import ConvNetConfig
    from mlds_jax.train import models

    layout = [s.as_dict() for s in models.param_layout(
        ConvNetConfig(channels=(16, 16, 16), strides=(1, 2, 2)))]
    sl = pairs.layer_slices(layout)
    assert list(sl) == ["conv_0", "conv_1", "conv_2", "head"]
    covered = sorted(i for slices in sl.values() for a, b in slices for i in range(a, b))
    assert covered == list(range(4970))
    assert pairs.sorted_weight_features(np.zeros((3, 4970)), layout).shape == (3, 17 * 8)


def _run(*args):
    done = subprocess.run([sys.executable, "-m", "mlds_jax.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-1000:] + done.stderr[-2000:]
    return done.stdout + done.stderr


def test_mlds_analyze_on_a_tiny_ds4_pair(tmp_path):
    nets = 12  # split_of(0..11): 8 train, 2 validation, 2 test pairs
    rel = Path(os.path.relpath(tmp_path, ROOT))
    settings = ["--per-task", str(nets), "--set", "recipe.max_epochs=2",
                "--set", "recipe.check_every=2", "--set", "run.chunk_rows=4",
                "--set", "run.checkpoint_minutes=0"]
    clean, trojan = rel / "ds4.zarr", rel / "ds4-trojan.zarr"
    _run("generate", "ds4", "--out", str(clean), *settings)
    _run("generate", "ds4-trojan", "--out", str(trojan), *settings)
    text = _run("analyze", str(clean), "--paired", str(trojan))
    assert "stats/linear all: ROC-AUC" in text
    r = json.loads((tmp_path / "ds4.zarr" / "analysis" / "analysis.json").read_text())
    t = r["trojan_detection"]
    assert t["n_pairs"] == nets and t["max_initial_difference"] == 0.0
    assert r["split"]["counts"] == {"train": 8, "validation": 2, "test": 2}
    from mlds_jax.store.dataset_store import DatasetStore

    held = DatasetStore.open(tmp_path / "ds4-trojan.zarr").read_per_net("held_out").astype(bool)
    assert t["held_out_pairs"] == int(held.sum()) and sum(t["families"].values()) == nets
    assert set(t["detectors"]) == {"stats/linear", "stats/gbt", "sorted/linear", "raw/linear",
                                   "stats/linear/twin"}
    assert set(t["divergence"]) == {"conv_0", "conv_1", "conv_2", "head", "all"}
    for d in t["detectors"].values():
        assert d["cv5"]["all"]["test_pairs"] == nets
        assert d["cv5"]["seen"]["test_pairs"] == nets - int(held.sum())
        a = d["all"]
        assert a["n_test"] == 4 and a["test_pairs"] == 2 and 0 <= a["roc_auc"] <= 1
        assert len(a["roc_auc_ci95"]) == 2 and a["chance"]["roc_auc"] == 0.5
        if held.any():
            assert d["held_out"].get("n_test", 0) == 2 * int(held.sum()) or d["held_out"]["skipped"]
    _card_and_info_show_the_twins(r, tmp_path, clean, trojan)
    # One store of a kind is refused in one line.
    done = subprocess.run([sys.executable, "-m", "mlds_jax.cli", "analyze", str(clean),
                           "--paired", str(clean)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and "one of each" in done.stderr
    assert "Traceback" not in done.stderr


def _card_and_info_show_the_twins(r, tmp_path, clean, trojan):
    """The twin rows of the targets table, recomputed here from the arrays with plain zarr:
    the clean-accuracy gap and the patch family's median attack success; the analysis
    stored them, the clean store's card (written by analyze) and `mlds info --paired` show
    them; the card's detection row is the stored cross-validated seen-family AUC."""
    import zarr

    groups = [zarr.open_group(str(tmp_path / name), mode="r")
              for name in ("ds4.zarr", "ds4-trojan.zarr")]
    names = groups[0].attrs["accuracy_names"]
    acc = [np.asarray(g["val_accuracy"][:]) for g in groups]
    gap = 100 * (acc[0][:, names.index("clean_accuracy")] - acc[1][:, names.index("clean_accuracy")])
    family = np.asarray(groups[1]["per_net/trigger_family"][:])
    patch = np.median(acc[1][family == 0, names.index("attack_success_rate")])
    assert groups[1].attrs["trigger_families"][0] == "patch" and (family == 0).any()
    assert r["twins"]["pairs"] == len(gap)
    np.testing.assert_allclose(r["twins"]["gap_points_mean"], gap.mean(), rtol=1e-5)
    np.testing.assert_allclose(r["twins"]["asr_median_by_family"]["patch"], patch, rtol=1e-6)
    card = (tmp_path / "ds4.zarr" / "README.md").read_text()
    info = _run("info", str(trojan), "--paired", str(clean))
    for text in (card, info):
        assert f"{gap.mean():+.2f} points mean" in text, text[-3000:]
        assert f"{patch:.3f} median" in text
    seen = r["trojan_detection"]["detectors"]["stats/linear"]["cv5"]["seen"]
    assert f"ROC-AUC {seen['roc_auc']:.3f}" in card
    rows = [line for line in info.splitlines() if line.strip().startswith("│ patch")]
    assert len(rows) == 1 and f"│ {int((family == 0).sum()):>8} │" in rows[0], rows
