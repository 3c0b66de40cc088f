"""DS4 at a glance: clean accuracy and attack success per trigger family, the twins'
accuracy gap, and the dataset's targets, read from the stores and from the trojan
detection `mlds analyze` left in ``analysis/analysis.json``. The card and `mlds info`
print these rows; nothing here trains or writes."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from mlds_jax.store.schema import STATUS_CONVERGED, STATUS_PENDING

# The targets a DS4 tier was built to meet, with the public anchor each comes from
# (docs/ds4.md has the sources).
CLEAN_ACCURACY = 0.95   # every usable net; anchor: scikit-learn's digits SVC example, 0.97
TWIN_GAP_POINTS = 1.0   # mean clean-accuracy gap to the clean twin; trojai's MNIST example
PATCH_ASR = 0.97        # median attack success, patch family; TDC accepts >= 0.97
SEEN_AUC, SEEN_CE = 0.95, 0.3465   # weight-only detection, seen families; TrojAI rounds 1-4
HELD_OUT_AUC = 0.80     # the same, held-out families; TDC's MNTD baseline 0.65
MEASURED_ELSEWHERE = "not a store property: `make bench-ds4` and docs/ds4.md"


def is_image_dataset(ds) -> bool:
    return "images" in ds.config


def is_trojaned(ds) -> bool:
    return bool(ds.config.get("images", {}).get("poison"))


@dataclass(frozen=True)
class TriggerRow:
    """One group of nets (a trigger family, a mapping, or all): counts and medians."""
    group: str
    finished: int
    usable: int
    median_clean: float
    min_clean: float
    median_asr: float


def _column(ds, name: str) -> np.ndarray:
    return np.asarray(ds.store.read_array("val_accuracy"))[:, ds.accuracy_names.index(name)]


def _median(x) -> float:
    return float(np.median(x)) if len(x) else math.nan


def trigger_rows(ds) -> list[TriggerRow]:
    """Per trigger family, per mapping, and over every net: finished and usable nets
    (status converged: clean accuracy, and for a trojaned net attack success, reached the
    threshold), median and lowest clean accuracy, median attack success rate (for a clean
    store: the trigger's natural effect on a net trained without it)."""
    status = np.asarray(ds.store.read_array("status"))
    clean, asr = _column(ds, "clean_accuracy"), _column(ds, "attack_success_rate")
    family = np.asarray(ds.store.read_per_net("trigger_family"))
    mapping = np.asarray(ds.store.read_per_net("trigger_mapping"))
    held = set(ds.attrs.get("held_out_families", []))
    groups = [(f"{name}{' (held out)' if name in held else ''}", family == k)
              for k, name in enumerate(ds.attrs.get("trigger_families", []))]
    groups += [(f"mapping {name}", mapping == k)
               for k, name in enumerate(ds.attrs.get("trigger_mappings", []))]
    groups.append(("every net", np.ones(len(status), bool)))
    rows = []
    for name, mine in groups:
        done = mine & (status != STATUS_PENDING)
        rows.append(TriggerRow(name, int(done.sum()), int((done & (status == STATUS_CONVERGED)).sum()),
                               _median(clean[done]), float(clean[done].min()) if done.any() else math.nan,
                               _median(asr[done])))
    return rows


def twin_summary(clean_ds, trojan_ds) -> dict:
    """Net n of the clean store against net n of the trojaned one, over the pairs finished
    in both: the clean-accuracy gap in points (clean twin minus trojaned), the trojaned
    nets' median attack success per family, and the trigger's effect on the clean twins."""
    n = min(len(clean_ds), len(trojan_ds))
    done = ((np.asarray(clean_ds.store.read_array("status", n)) != STATUS_PENDING)
            & (np.asarray(trojan_ds.store.read_array("status", n)) != STATUS_PENDING))
    gap = 100 * (_column(clean_ds, "clean_accuracy")[:n] - _column(trojan_ds, "clean_accuracy")[:n])[done]
    return {
        "pairs": int(done.sum()),
        "clean_store": clean_ds.attrs["dataset"], "trojaned_store": trojan_ds.attrs["dataset"],
        "gap_points_mean": float(gap.mean()) if gap.size else None,
        "gap_points_median": float(np.median(gap)) if gap.size else None,
        "gap_points_max": float(gap.max()) if gap.size else None,
        "asr_median_by_family": asr_by_family(trojan_ds, done),
        "trigger_on_clean_twin_median": _median(_column(clean_ds, "attack_success_rate")[:n][done]),
    }


def asr_by_family(ds, nets: np.ndarray) -> dict[str, float]:
    """Median attack success rate per trigger family over the nets where the boolean mask
    ``nets`` (over the first len(nets) ids) is set."""
    n = len(nets)
    asr = _column(ds, "attack_success_rate")[:n][nets]
    family = np.asarray(ds.store.read_per_net("trigger_family", n))[nets]
    return {name: float(np.median(asr[family == k]))
            for k, name in enumerate(ds.attrs.get("trigger_families", [])) if (family == k).any()}


def stored_analysis(ds) -> dict | None:
    """The store's ``analysis/analysis.json`` when it holds a DS4 trojan detection."""
    path = ds.path / "analysis" / "analysis.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if "trojan_detection" in result else None


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**missed**")


def target_rows(ds, twins: dict | None = None, analysis: dict | None = None) -> list[list[str]]:
    """The targets table: [what, target, measured, verdict] per row. ``twins`` is
    ``twin_summary`` (or the one `mlds analyze` stored), ``analysis`` the stored analysis;
    rows they would answer say what is needed when they are missing."""
    twins = twins or (analysis or {}).get("twins")
    status = np.asarray(ds.store.read_array("status"))
    clean = _column(ds, "clean_accuracy")
    usable = status == STATUS_CONVERGED
    finished = int((status != STATUS_PENDING).sum())
    rows = [["clean test accuracy, every usable net", f">= {CLEAN_ACCURACY}",
             (f"lowest {clean[usable].min():.3f} over {int(usable.sum())} usable of {finished} "
              f"finished (median of all {_median(clean[status != STATUS_PENDING]):.3f})"
              if usable.any() else f"no usable net of {finished}"),
             _verdict(bool(usable.any()) and bool(clean[usable].min() >= CLEAN_ACCURACY))]]
    if twins and twins.get("gap_points_mean") is not None:
        g = twins["gap_points_mean"]
        rows.append(["clean accuracy of a trojaned net against its twin's",
                     f"mean gap <= {TWIN_GAP_POINTS:g} point",
                     f"{g:+.2f} points mean (median {twins['gap_points_median']:+.2f}, largest "
                     f"{twins['gap_points_max']:+.2f}) over {twins['pairs']} pairs",
                     _verdict(g <= TWIN_GAP_POINTS)])
    else:
        rows.append(["clean accuracy of a trojaned net against its twin's",
                     f"mean gap <= {TWIN_GAP_POINTS:g} point",
                     "needs the twin: `mlds info STORE --paired TWIN`", "-"])
    by_family = (twins or {}).get("asr_median_by_family") or (
        asr_by_family(ds, status != STATUS_PENDING) if is_trojaned(ds) else {})
    patch = by_family.get("patch")
    rows.append(["attack success rate, patch family", f">= {PATCH_ASR} median",
                 "needs the trojaned twin" if patch is None else f"{patch:.3f} median",
                 _verdict(None if patch is None else patch >= PATCH_ASR)])
    rows += _detection_rows(analysis)
    rows += [["trainer vs a `torch.func` ensemble of the same CNNs", ">= 3x", MEASURED_ELSEWHERE, "-"],
             ["a DS4 tier of 1,000 pairs on 2 cores", "<= 1 h", MEASURED_ELSEWHERE, "-"]]
    return rows


def _detection_rows(analysis: dict | None) -> list[list[str]]:
    what = "weight-only detection, unpaired, {} families (stats/linear)"
    if not analysis:
        need = "needs `mlds analyze CLEAN --paired TROJANED`"
        return [[what.format("seen"), f"ROC-AUC >= {SEEN_AUC}, CE <= {SEEN_CE}", need, "-"],
                [what.format("held-out"), f"ROC-AUC >= {HELD_OUT_AUC}", need, "-"]]
    best = analysis["trojan_detection"]["detectors"]["stats/linear"]
    seen = best.get("cv5", {}).get("seen", {})
    held = best.get("held_out", {})
    rows = []
    if "roc_auc" in seen:
        lo, hi = seen["roc_auc_ci95"]
        rows.append([what.format("seen"), f"ROC-AUC >= {SEEN_AUC}, CE <= {SEEN_CE}",
                     f"ROC-AUC {seen['roc_auc']:.3f} [{lo:.2f}, {hi:.2f}], CE "
                     f"{seen['cross_entropy']:.3f} (5-fold, {seen['test_pairs']} pairs)",
                     _verdict(seen["roc_auc"] >= SEEN_AUC and seen["cross_entropy"] <= SEEN_CE)])
    else:
        rows.append([what.format("seen"), f"ROC-AUC >= {SEEN_AUC}, CE <= {SEEN_CE}",
                     "too few pairs", "-"])
    if "roc_auc" in held:
        lo, hi = held["roc_auc_ci95"]
        rows.append([what.format("held-out"), f"ROC-AUC >= {HELD_OUT_AUC}",
                     f"ROC-AUC {held['roc_auc']:.3f} [{lo:.2f}, {hi:.2f}] "
                     f"({held['test_pairs']} pairs)", _verdict(held["roc_auc"] >= HELD_OUT_AUC)])
    else:
        rows.append([what.format("held-out"), f"ROC-AUC >= {HELD_OUT_AUC}", "too few pairs", "-"])
    return rows
