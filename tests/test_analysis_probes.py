"""Probes, clustering and pair analyses on arrays whose answer is known: a planted signal
gives near-perfect scores, no signal gives chance."""

import subprocess
import sys

import numpy as np
import pytest

from mlds_jax.analysis import clustering, pairs, probes
from mlds_jax.analysis.splits import split_of


def _planted(n=400, f=30, k=5, signal=3.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centres = rng.standard_normal((k, f))
    return rng.standard_normal((n, f)) + signal * centres[y], y, split_of(np.arange(n))


@pytest.mark.parametrize("model", ["linear", "gbt"])
def test_classify_planted_signal_is_found(model):
    x, y, split = _planted()
    r = probes.classify(x, y, split, model)
    assert r["accuracy"] >= 0.97
    assert r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
    assert r["n_train"] + r["n_validation"] + r["n_test"] == 400
    assert abs(r["chance"] - 0.2) < 0.1


@pytest.mark.parametrize("model", ["linear", "gbt"])
def test_classify_no_signal_is_chance(model):
    x, y, split = _planted(n=800, signal=0.0, seed=1)
    r = probes.classify(x, y, split, model)
    assert abs(r["accuracy"] - 0.2) < 0.1
    assert r["ci95"][0] < 0.2 + 0.01 and r["ci95"][1] > 0.2 - 0.01


def test_ridge_cv_baseline_planted_and_none():
    x, y, _ = _planted(n=300)
    assert probes.ridge_cv_accuracy(x, y)["mean"] > 0.97
    x, y, _ = _planted(n=600, signal=0.0, seed=7)
    assert abs(probes.ridge_cv_accuracy(x, y)["mean"] - 0.2) < 0.06


def test_wilson_interval():
    low, high = probes.wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert probes.wilson_interval(10, 10)[1] == 1.0


def test_regress_planted_and_none():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 10))
    split = split_of(np.arange(500))
    y = x @ rng.standard_normal(10) + 0.05 * rng.standard_normal(500)
    for model in ("linear", "gbt"):
        r = probes.regress(x, y, split, model)
        assert r["r2"] > (0.97 if model == "linear" else 0.7) and r["kendall_tau"] > 0.7
    r = probes.regress(x, rng.standard_normal(500), split, "linear")
    assert r["r2"] < 0.05 and abs(r["kendall_tau"]) < 0.15


def test_clustering_planted_and_none():
    x, y, _ = _planted(n=200)
    r = clustering.clustering_scores(x, y)
    assert r["distance_ratio"] < 0.6 and r["silhouette"] > 0.3
    assert r["kmeans_ari"] > 0.95 and r["nn1_accuracy"] > 0.97
    x, y, _ = _planted(n=200, signal=0.0)
    r = clustering.clustering_scores(x, y)
    assert abs(r["distance_ratio"] - 1) < 0.02 and abs(r["silhouette"]) < 0.05
    assert abs(r["kmeans_ari"]) < 0.05 and r["nn1_accuracy"] < 0.35


def _twins(n=600, f=40, shift=0.0, seed=3):
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((n, f))
    direction = rng.standard_normal(f)
    w2 = w1 + shift * direction + 0.01 * rng.standard_normal((n, f))
    return w1, w2, split_of(np.arange(n))


def test_trigger_detection_alone_and_with_twin():
    # A shift small against the spread between nets: hard alone, trivial with the twin.
    w1, w2, split = _twins(shift=0.05)
    alone = pairs.trigger_detection(w1, w2, split)
    twin = pairs.trigger_detection(w1, w2, split, twin_reference=True)
    assert alone["roc_auc"] < 0.75
    assert twin["roc_auc"] > 0.99 and twin["cross_entropy"] < 0.1
    # A large shift is seen alone too; no shift is chance either way.
    assert pairs.trigger_detection(*_twins(shift=1.0))["roc_auc"] > 0.99
    none = pairs.trigger_detection(*_twins(shift=0.0), twin_reference=True)
    assert abs(none["roc_auc"] - 0.5) < 0.1 and none["cross_entropy"] > 0.6


def test_twin_divergence_per_layer():
    layout = [{"name": "rnn/weight_ih_l0", "shape": [4, 5], "offset": 0},
              {"name": "rnn/bias_ih_l0", "shape": [4], "offset": 20},
              {"name": "head_0/weight", "shape": [2, 4], "offset": 24}]
    rng = np.random.default_rng(4)
    w1 = rng.standard_normal((60, 32))
    w2 = w1.copy()
    w2[:, 24:] += 0.01  # only the head moves
    task = np.arange(60) % 3
    d = pairs.twin_divergence(w1, w2, task, layout)
    assert set(d) == {"rnn/l0", "head_0", "all"}
    assert d["rnn/l0"]["ratio_median"] == 0.0
    assert 0 < d["head_0"]["ratio_median"] < 0.05
    assert d["head_0"]["spread_median"] == pytest.approx(np.sqrt(2 * 8), rel=0.3)


def test_import_needs_no_sklearn_and_missing_sklearn_names_the_extra():
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "import mlds_jax, mlds_jax.analysis\n"
            "from mlds_jax.analysis import probes\n"
            "try:\n"
            "    probes.classify([[0.0], [1.0]], [0, 1], [0, 2])\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'mlds-jax[analysis]'" in out.stdout
