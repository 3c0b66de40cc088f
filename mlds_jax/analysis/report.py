"""``analyze``: every number of ``mlds analyze`` from one store (and its DS2 twin store),
written as ``analysis.json`` with figures; the dataset card (``mlds_jax.research.card``) renders
that file, so the card never imports the analysis.

Which nets: finished nets (converged or capped) with finite weights; with ``paired``, the
pair analyses use the ids finished with finite weights in both stores.
"""

from __future__ import annotations

import datetime
import io
import json
import time
from pathlib import Path

import numpy as np

from mlds_jax.analysis import clustering, features, pairs, probes, splits
from mlds_jax.analysis.symmetry import Symmetries

ANALYSIS_FILE = "analysis.json"
PROJECTION_FIGURE = "analysis_projection.png"
STATUS_CONVERGED, STATUS_CAPPED = 1, 2


def _usable(ds) -> np.ndarray:
    status = np.asarray(ds.status[:])
    ids = np.flatnonzero((status == STATUS_CONVERGED) | (status == STATUS_CAPPED))
    w = ds.load_weights(ids)
    return ids[np.isfinite(w).all(axis=1)]


def encodings(ds, ids: np.ndarray, *, probe_sequences: int = 32, probe_length: int = 32,
              align_reference: int | None = None, log=print) -> dict[str, np.ndarray]:
    """The weight encodings of nets ``ids`` of ``ds``: {name: (R, F)}. ``align_reference``
    is the row (into ids) every net is matched to (default: the first)."""
    sym = Symmetries(ds.network, ds.layout)
    w = ds.load_weights(ids)
    w0 = ds.load_weights(ids, initial=True)
    log(f"  canonical form and alignment of {len(ids)} nets")
    canon = sym.canonicalize(w)
    ref = canon[0 if align_reference is None else align_reference]
    aligned = sym.align(canon, ref)
    log("  statistics and functional probes")
    stats, _ = features.tensor_statistics(w, ds.layout)
    stats_delta, _ = features.tensor_statistics(w - w0, ds.layout)
    probes_in = features.probe_sequences(ds.network, probe_sequences, probe_length)
    func = features.functional_features(ds.network, w, probes_in)
    return {"raw": w, "canonical": canon, "aligned": aligned, "delta": w - w0, "initial": w0,
            "stats": stats, "stats_delta": stats_delta, "functional": func}


def analyze(path, *, paired=None, out=None, seed: int = splits.DEFAULT_SEED,
            fractions=splits.DEFAULT_FRACTIONS, write_store: bool = True, nets: str | None = None,
            log=print) -> dict:
    """Run every analysis on the store at ``path`` (and the DS2 twin store ``paired``);
    write ``analysis.json`` and figures into ``out`` (default: ``path/analysis``). With
    ``write_store``, ship the split and normalisation statistics in the store and rewrite
    its dataset card with an analysis section. ``nets``: a selection (``Dataset.select``, e.g.
    ``"0:200"``) to analyse instead of every finished net. Returns the result dict."""
    from mlds_jax.analysis._sklearn import one_thread

    with one_thread():  # numpy's BLAS too: threads oversubscribed a busy 2-core machine
        return _analyze(path, paired, out, seed, fractions, write_store, nets, log)


def _analyze(path, paired, out, seed, fractions, write_store, nets, log) -> dict:
    from mlds_jax.research.reader import open_dataset

    t0 = time.perf_counter()
    ds = open_dataset(path)
    if "images" in ds.config:
        return _analyze_images(ds, paired, out, seed, fractions, write_store, nets, log, t0)
    out = Path(out) if out is not None else Path(ds.path) / splits.SPLIT_DIR
    out.mkdir(parents=True, exist_ok=True)
    ids = _usable(ds)
    if nets is not None:
        ids = np.intersect1d(ids, ds.select(nets))
    meta = ds.metadata().loc[ids]
    task = meta["task"].to_numpy()
    split = splits.split_of(ids, seed, fractions)
    log(f"{ds.attrs['dataset']}: {len(ids)} finished nets with finite weights; split seed {seed}")
    enc = encodings(ds, ids, log=log)
    result: dict = {
        "dataset": ds.attrs["dataset"], "store": str(ds.path),
        "package_version": ds.attrs.get("package_version"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "split": {"seed": int(seed), "fractions": list(map(float, fractions)),
                  "counts": {name: int((split == i).sum()) for i, name in enumerate(splits.SPLITS)},
                  "nets": int(len(ids)), "selection": nets,
                  "note": "finished nets with finite weights"},
        "task_names": ds.task_names,
        "nets_per_task": {ds.task_names[t]: int((task == t).sum()) for t in np.unique(task)},
    }

    log("task identification")
    ident = {}
    for name in ("raw", "canonical", "aligned", "delta", "initial", "stats", "stats_delta",
                 "functional"):
        ident[f"{name}/linear"] = probes.classify(enc[name], task, split, "linear", seed=seed)
    for name in ("stats", "stats_delta"):
        ident[f"{name}/gbt"] = probes.classify(enc[name], task, split, "gbt", seed=seed)
    result["task_identification"] = ident
    result["baseline_ridge_cv5"] = {
        name: probes.ridge_cv_accuracy(enc[name], task, seed=seed)
        for name in ("raw", "canonical", "aligned", "delta", "initial", "stats", "functional")}

    log("clustering")
    result["clustering"] = {name: clustering.clustering_scores(enc[name], task, seed=seed)
                            for name in ("raw", "canonical", "aligned", "stats", "functional")}

    log("training outcomes")
    epochs = meta["epochs"].to_numpy().astype(np.float64)
    converged = meta["status"].to_numpy() == STATUS_CONVERGED
    outcomes = {}
    acc_cols = [c for c in ds.accuracy_names if c in meta.columns][:2]
    for model in ("linear", "gbt"):
        if converged.sum() >= 10:
            outcomes[f"epochs_converged/{model}"] = probes.regress(
                enc["stats"][converged], epochs[converged], split[converged], model, seed=seed)
        for col in acc_cols:
            outcomes[f"{col}/{model}"] = probes.regress(
                enc["stats"], meta[col].to_numpy(), split, model, seed=seed)
    result["outcomes"] = outcomes

    if paired is not None:
        result["pairs"] = _pairs(ds, open_dataset(paired), ids, seed, fractions, log)

    _projection_figure(enc, task, ds.task_names, out / PROJECTION_FIGURE, ds.attrs["dataset"])
    result["figures"] = [PROJECTION_FIGURE]
    result["seconds"] = round(time.perf_counter() - t0, 1)
    (out / ANALYSIS_FILE).write_text(json.dumps(_finite(result), indent=1) + "\n")
    if write_store:
        train = split == splits.TRAIN
        splits.write_splits(ds.path, len(ds), seed=seed, fractions=fractions, norms={
            "raw": splits.normalization(enc["raw"][train]),
            "canonical": splits.normalization(enc["canonical"][train])})
        _card_if_in_store(ds, out)
    log(f"wrote {out / ANALYSIS_FILE} in {result['seconds']} s")
    return result


def _card_if_in_store(ds, out: Path) -> None:
    """Rewrite the store's card when the analysis went into the store itself (the card
    reads analysis.json; an analysis written elsewhere leaves the card alone)."""
    if out.resolve() == (Path(ds.path) / splits.SPLIT_DIR).resolve():
        from mlds_jax.research.card import write_card

        write_card(ds)


def _analyze_images(ds, paired, out, seed, fractions, write_store, nets, log, t0) -> dict:
    """DS4: trojan detection from weights alone, clean nets against their trojaned twins.
    The task identification, clustering and probes of the RNN datasets do not apply (one
    task; the functional probes and symmetries are the RNN's)."""
    from mlds_jax.research import trojans
    from mlds_jax.research.reader import open_dataset
    from mlds_jax.store.schema import StoreError

    name = ds.attrs["dataset"]
    if paired is None:
        raise StoreError(f"{name}: DS4 analysis is trojan detection and needs the twin store: "
                         f"mlds analyze CLEAN --paired TROJANED")
    twin = open_dataset(paired)
    if "images" not in twin.config:
        raise StoreError(f"{twin.attrs['dataset']} is not a DS4 (image) store; --paired needs "
                         f"the twin of {name}")
    poisoned = [bool(np.asarray(d.store.read_per_net("poisoned")).any()) for d in (ds, twin)]
    if poisoned[0] == poisoned[1]:
        raise StoreError(f"{name} and {twin.attrs['dataset']} are both "
                         f"{'trojaned' if poisoned[0] else 'clean'}: --paired needs one of each")
    clean, trojan = (twin, ds) if poisoned[0] else (ds, twin)
    out = Path(out) if out is not None else Path(ds.path) / splits.SPLIT_DIR
    out.mkdir(parents=True, exist_ok=True)
    ids = np.intersect1d(_usable(clean), _usable(trojan))
    if nets is not None:
        ids = np.intersect1d(ids, ds.select(nets))
    split = splits.split_of(ids, seed, fractions)
    family = np.asarray(trojan.store.read_per_net("trigger_family"))[ids]
    held_out = np.asarray(trojan.store.read_per_net("held_out"))[ids].astype(bool)
    family_names = list(trojan.attrs.get("trigger_families", []))
    log(f"{name}: {len(ids)} pairs of finished nets with finite weights (clean "
        f"{clean.attrs['dataset']}, trojaned {trojan.attrs['dataset']}); split seed {seed}")
    w1, w2 = clean.load_weights(ids), trojan.load_weights(ids)
    same_init = float(np.abs(clean.load_weights(ids, initial=True)
                             - trojan.load_weights(ids, initial=True)).max()) if len(ids) else 0.0
    layout = clean.layout
    f = {"stats": (features.tensor_statistics(w1, layout)[0],
                   features.tensor_statistics(w2, layout)[0]),
         "sorted": (pairs.sorted_weight_features(w1, layout),
                    pairs.sorted_weight_features(w2, layout)),
         "raw": (w1, w2)}
    log("trojan detection: clean nets against their trojaned twins")
    detectors = {}
    for key, feat, model, ref in (("stats/linear", "stats", "linear", False),
                                  ("stats/gbt", "stats", "gbt", False),
                                  ("sorted/linear", "sorted", "linear", False),
                                  ("raw/linear", "raw", "linear", False),
                                  ("stats/linear/twin", "stats", "linear", True)):
        a, b = f[feat]
        detectors[key] = pairs.trojan_detection(a, b, split, held_out, model=model,
                                                twin_reference=ref, seed=seed)
        detectors[key]["cv5"] = pairs.cv_trojan_detection(
            *((a - b, b - a) if ref else (a, b)), ids, held_out, model=model, seed=seed)
    result: dict = {
        "dataset": name, "store": str(ds.path), "paired_store": str(twin.path),
        "package_version": ds.attrs.get("package_version"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "split": {"seed": int(seed), "fractions": list(map(float, fractions)),
                  "counts": {n: int((split == i).sum()) for i, n in enumerate(splits.SPLITS)},
                  "nets": int(len(ids)), "selection": nets,
                  "note": "pairs finished with finite weights in both stores; counts are "
                          "pairs (a clean net and its trojaned twin, always in one fold)"},
        "trojan_detection": {
            "n_pairs": int(len(ids)), "max_initial_difference": same_init,
            "families": {family_names[k] if k < len(family_names) else str(k):
                         int((family == k).sum()) for k in np.unique(family)},
            "held_out_families": list(trojan.attrs.get("held_out_families", [])),
            "held_out_pairs": int(held_out.sum()),
            "chance": dict(pairs.CHANCE),
            "features": {"stats": "per tensor mean, variance, quantiles 0/25/50/75/100 %",
                         "sorted": "per tensor sorted weights at 17 evenly spaced quantiles",
                         "raw": "the flat weight vector"},
            "measurements": {"all": "every family, train + validation -> test split",
                             "seen": "families not held out, train + validation -> test",
                             "held_out": "the same detector on every held-out-family pair",
                             "cv5": "grouped 5-fold cross-validation by pair id, pooled "
                                    "out-of-fold scores: all pairs, and seen families only"},
            "divergence": pairs.twin_divergence(w1, w2, np.zeros(len(ids), np.int64), layout),
            "detectors": detectors},
    }
    result["twins"] = trojans.twin_summary(clean, trojan)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    (out / ANALYSIS_FILE).write_text(json.dumps(_finite(result), indent=1) + "\n")
    if write_store:
        train = split == splits.TRAIN
        splits.write_splits(ds.path, len(ds), seed=seed, fractions=fractions, norms={
            "raw": splits.normalization(ds.load_weights(ids)[train])} if train.any() else None)
        _card_if_in_store(ds, out)
    best = detectors["stats/linear"]
    for part in ("all", "seen", "held_out"):
        r = best.get(part, {})
        if "roc_auc" in r:
            log(f"  stats/linear {part}: ROC-AUC {r['roc_auc']:.3f} "
                f"[{r['roc_auc_ci95'][0]:.3f}, {r['roc_auc_ci95'][1]:.3f}] on "
                f"{r['test_pairs']} test pairs (chance 0.5)")
    for part in ("all", "seen"):
        r = best["cv5"].get(part, {})
        if "roc_auc" in r:
            log(f"  stats/linear cv5 {part}: ROC-AUC {r['roc_auc']:.3f} "
                f"[{r['roc_auc_ci95'][0]:.3f}, {r['roc_auc_ci95'][1]:.3f}] on "
                f"{r['test_pairs']} pairs out of fold (chance 0.5)")
    log(f"wrote {out / ANALYSIS_FILE} in {result['seconds']} s")
    return result


def _pairs(ds1, ds2, ids1, seed, fractions, log) -> dict:
    log("pairs: DS1 nets against their DS2 twins")
    ids = np.intersect1d(ids1, _usable(ds2))
    split = splits.split_of(ids, seed, fractions)
    task = ds1.tasks()[ids]
    w1, w2 = ds1.load_weights(ids), ds2.load_weights(ids)
    same_init = float(np.abs(ds1.load_weights(ids, initial=True)
                             - ds2.load_weights(ids, initial=True)).max()) if len(ids) else 0.0
    sym = Symmetries(ds1.network, ds1.layout)
    f = {"stats": (features.tensor_statistics(w1, ds1.layout)[0],
                   features.tensor_statistics(w2, ds1.layout)[0]),
         "raw": (w1, w2), "canonical": (sym.canonicalize(w1), sym.canonicalize(w2))}
    out = {"n_pairs": int(len(ids)), "max_initial_difference": same_init,
           "divergence": pairs.twin_divergence(w1, w2, task, ds1.layout), "detection": {}}
    for name, (a, b) in f.items():
        for ref in (False, True):
            key = f"{name}/linear/{'twin' if ref else 'alone'}"
            out["detection"][key] = pairs.trigger_detection(a, b, split, twin_reference=ref,
                                                            seed=seed)
    # Control: DS2 nets train under another stop rule (clean and triggered sets), so their
    # epochs and status differ; what do those alone tell a detector?
    outcome = [np.stack([np.asarray(d.epochs[:])[ids], np.asarray(d.status[:])[ids] == 1],
                        axis=1).astype(np.float64) for d in (ds1, ds2)]
    out["detection"]["outcome_only/gbt/alone"] = pairs.trigger_detection(
        *outcome, split, model="gbt", seed=seed)
    for ref in (False, True):
        out["detection"][f"stats/gbt/{'twin' if ref else 'alone'}"] = pairs.trigger_detection(
            *f["stats"], split, model="gbt", twin_reference=ref, seed=seed)
    return out


def _finite(x):
    """JSON without NaN: NaN and inf become null."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _projection_figure(enc, task, task_names, path: Path, title: str) -> None:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from mlds_jax.store.schema import write_atomic

    panels = ("raw", "canonical", "aligned", "functional")
    fig = Figure(figsize=(4.2 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, name in zip(axes, panels):
        if len(task) >= 3:
            p = clustering.pca_2d(enc[name])
            for t in np.unique(task):
                m = task == t
                ax.scatter(p[m, 0], p[m, 1], s=10, alpha=0.7, linewidths=0,
                           color=colormaps["tab10"](int(t) % 10), label=task_names[t])
        ax.set_title(f"{name} (standardised PCA)", fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7, markerscale=1.5)
    fig.suptitle(f"{title}: {len(task)} nets, first two principal components")
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    write_atomic(path, png.getvalue())
