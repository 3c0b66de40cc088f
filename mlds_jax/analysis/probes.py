"""Probes: what a model can read from an encoding of the weights, measured on the fixed
test split after choosing its regularisation on the validation split.

Every function takes feature arrays and labels plus the split codes of ``splits.py``; the
test split is touched once, for the reported number.
"""

from __future__ import annotations

import math

import numpy as np

from mlds_jax.analysis._sklearn import one_thread, sklearn
from mlds_jax.analysis.splits import TEST, TRAIN, VALIDATION

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # inverse L2 strengths for the linear probes
ALPHA_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)  # ridge strengths for regressions
GBT_ROUNDS = 60  # boosting rounds (per class): fixed, no tuning on the validation split


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion correct / n."""
    if n == 0:
        return (math.nan, math.nan)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _linear_classifier(c: float):
    pipeline, preprocessing, linear = (sklearn("pipeline"), sklearn("preprocessing"),
                                       sklearn("linear_model"))
    return pipeline.make_pipeline(preprocessing.StandardScaler(),
                                  linear.LogisticRegression(C=c, max_iter=2000))


def _gbt_classifier(seed: int):
    ensemble = sklearn("ensemble")
    return ensemble.HistGradientBoostingClassifier(max_iter=GBT_ROUNDS, max_leaf_nodes=15,
                                                   early_stopping=False, random_state=seed)


def _clean(x, y, split):
    x = np.asarray(x, np.float64)
    keep = np.isfinite(x).all(axis=1)
    return x[keep], np.asarray(y)[keep], np.asarray(split)[keep]


def _classify(x: np.ndarray, y: np.ndarray, split: np.ndarray, model: str = "linear", *,
             seed: int = 0) -> dict:
    """Accuracy on the test split of a classifier of ``y`` from features ``x`` (R, F).

    ``model``: "linear" (standardised logistic regression; C chosen from C_GRID on the
    validation split, then refitted on train + validation) or "gbt" (histogram gradient
    boosted trees, fixed settings, fitted on train + validation). Rows with non-finite
    features are dropped. Returns accuracy, its 95 % Wilson interval, chance (the most
    common test class's share), the sizes, and C."""
    x, y, split = _clean(x, y, split)
    tr, va, te = split == TRAIN, split == VALIDATION, split == TEST
    fit = tr | va
    chosen = None
    if model == "linear":
        if va.any() and len(np.unique(y[tr])) > 1:
            scores = [(_linear_classifier(c).fit(x[tr], y[tr]).score(x[va], y[va]), -c)
                      for c in C_GRID]
            chosen = -max(scores)[1]  # best validation accuracy; ties to the stronger prior
        else:
            chosen = 1.0
        clf = _linear_classifier(chosen)
    elif model == "gbt":
        clf = _gbt_classifier(seed)
    else:
        raise ValueError(f"model must be 'linear' or 'gbt', got {model!r}")
    clf.fit(x[fit], y[fit])
    pred = clf.predict(x[te])
    correct = int((pred == y[te]).sum())
    low, high = wilson_interval(correct, int(te.sum()))
    _, counts = np.unique(y[te], return_counts=True)
    return {"accuracy": correct / max(int(te.sum()), 1), "ci95": [low, high],
            "chance": float(counts.max() / counts.sum()) if counts.size else math.nan,
            "n_train": int(tr.sum()), "n_validation": int(va.sum()), "n_test": int(te.sum()),
            "model": model, "C": chosen, "features": int(x.shape[1])}


def _binary_scores(x: np.ndarray, y: np.ndarray, split: np.ndarray, model: str = "linear", *,
                  seed: int = 0, keep_scores: bool = False) -> dict:
    """A detector of ``y`` in {0, 1} from ``x``: ROC-AUC, cross-entropy (nats, probabilities
    clipped to [1e-6, 1 - 1e-6]) and accuracy on the test split, chosen and fitted as in
    ``classify``. Rows whose split code is none of train, validation, test are left out.
    ``keep_scores``: also return the test rows' probabilities ``p_test`` (in row order)."""
    metrics = sklearn("metrics")
    x, y, split = _clean(x, y, split)
    y = y.astype(np.int64)
    tr, va, te = split == TRAIN, split == VALIDATION, split == TEST
    chosen = None
    if model == "linear":
        scores = []
        for c in C_GRID:
            p = _linear_classifier(c).fit(x[tr], y[tr]).predict_proba(x[va])[:, 1]
            scores.append((-metrics.log_loss(y[va], np.clip(p, 1e-6, 1 - 1e-6), labels=[0, 1]), -c))
        chosen = -max(scores)[1]
        clf = _linear_classifier(chosen)
    else:
        clf = _gbt_classifier(seed)
    clf.fit(x[tr | va], y[tr | va])
    p = np.clip(clf.predict_proba(x[te])[:, 1], 1e-6, 1 - 1e-6)
    return {"roc_auc": float(metrics.roc_auc_score(y[te], p)),
            "cross_entropy": float(metrics.log_loss(y[te], p, labels=[0, 1])),
            "accuracy": float(((p > 0.5) == y[te]).mean()),
            "n_train": int(tr.sum()), "n_validation": int(va.sum()), "n_test": int(te.sum()),
            "positives_test": int(y[te].sum()), "model": model, "C": chosen,
            **({"p_test": p} if keep_scores else {})}


def _regress(x: np.ndarray, y: np.ndarray, split: np.ndarray, model: str = "linear", *,
            seed: int = 0) -> dict:
    """Predict a number ``y`` from ``x``: R^2 and Kendall's tau on the test split. "linear":
    standardised ridge, alpha from ALPHA_GRID on validation; "gbt": gradient-boosted trees.
    Rows with a non-finite target or features are dropped."""
    from scipy.stats import kendalltau

    pipeline, preprocessing, linear, ensemble, metrics = (
        sklearn("pipeline"), sklearn("preprocessing"), sklearn("linear_model"),
        sklearn("ensemble"), sklearn("metrics"))
    y = np.asarray(y, np.float64)
    keep = np.isfinite(y)
    x, y, split = _clean(np.asarray(x)[keep], y[keep], np.asarray(split)[keep])
    tr, va, te = split == TRAIN, split == VALIDATION, split == TEST

    def ridge(a):
        return pipeline.make_pipeline(preprocessing.StandardScaler(), linear.Ridge(alpha=a))

    chosen = None
    if model == "linear":
        chosen = (max(ALPHA_GRID, key=lambda a: ridge(a).fit(x[tr], y[tr]).score(x[va], y[va]))
                  if va.sum() > 1 else 1.0)
        reg = ridge(chosen)
    else:
        reg = ensemble.HistGradientBoostingRegressor(max_iter=GBT_ROUNDS, max_leaf_nodes=15,
                                                     early_stopping=False, random_state=seed)
    reg.fit(x[tr | va], y[tr | va])
    pred = reg.predict(x[te])
    tau = kendalltau(pred, y[te]).statistic if te.sum() > 1 else math.nan
    return {"r2": float(metrics.r2_score(y[te], pred)) if te.sum() > 1 else math.nan,
            "kendall_tau": float(tau), "n_train": int(tr.sum()), "n_validation": int(va.sum()),
            "n_test": int(te.sum()), "model": model, "alpha": chosen}


def classify(x, y, split, model: str = "linear", *, seed: int = 0) -> dict:
    with one_thread():
        return _classify(x, y, split, model, seed=seed)


def binary_scores(x, y, split, model: str = "linear", *, seed: int = 0,
                  keep_scores: bool = False) -> dict:
    with one_thread():
        return _binary_scores(x, y, split, model, seed=seed, keep_scores=keep_scores)


def regress(x, y, split, model: str = "linear", *, seed: int = 0) -> dict:
    with one_thread():
        return _regress(x, y, split, model, seed=seed)


classify.__doc__ = _classify.__doc__
binary_scores.__doc__ = _binary_scores.__doc__
regress.__doc__ = _regress.__doc__


def ridge_cv_accuracy(x: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0) -> dict:
    """The issue's outside baseline, reproduced: mean and spread of the accuracy of a
    standardised ``RidgeClassifier`` (alpha 1) over ``folds`` stratified folds of all rows
    (no fixed split). For comparison with numbers measured that way, not for reporting."""
    model_selection, pipeline, preprocessing, linear = (
        sklearn("model_selection"), sklearn("pipeline"), sklearn("preprocessing"),
        sklearn("linear_model"))
    x, y, _ = _clean(x, y, np.zeros(len(y)))
    clf = pipeline.make_pipeline(preprocessing.StandardScaler(), linear.RidgeClassifier())
    cv = model_selection.StratifiedKFold(folds, shuffle=True, random_state=seed)
    with one_thread():
        scores = model_selection.cross_val_score(clf, x, y, cv=cv)
    return {"mean": float(scores.mean()), "min": float(scores.min()),
            "max": float(scores.max()), "folds": folds, "n": int(len(y))}
