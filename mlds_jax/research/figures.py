"""The dataset card's figures: training loss per task, epochs to converge, and the final
weights on their first two principal components. matplotlib draws through its Agg canvas
only (no pyplot, no GUI backend); each figure is written atomically as a PNG."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from mlds_jax.research.reader import Dataset
from mlds_jax.store.schema import (
    STATUS_CAPPED,
    STATUS_CONVERGED,
    STATUS_DIVERGED,
    STATUS_PENDING,
    write_atomic,
)


def _colour(t: int):
    from matplotlib import colormaps

    return colormaps["tab10"](t % 10)


def _grid(k: int, width: float = 4.0, height: float = 3.0):
    from matplotlib.figure import Figure

    cols = min(max(k, 1), 3)
    rows = math.ceil(max(k, 1) / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[k:]:
        ax.set_visible(False)
    return fig, axes


def _save(fig, path: Path) -> None:
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    write_atomic(path, png.getvalue())


def _loss_axis(ax, low: float, high: float) -> None:
    """Log scale labelled 0.1, 0.2, 0.5, ... when the losses span a factor of 3 or more;
    linear otherwise (a log axis over a narrow range has no readable ticks)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if high >= 3 * low:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.3)


def _first_finished(status, task, t: int, limit: int) -> np.ndarray:
    return np.flatnonzero((task == t) & (status != STATUS_PENDING))[:limit]


def plot_loss_curves(ds: Dataset, status, task, path: Path, max_nets_per_task: int = 1000):
    """Per task: median training loss per epoch with 25-75 % and 10-90 % bands, over the
    nets still training at that epoch (a stopped net's curve is NaN); dashed, on the right
    axis: the share of those nets still training."""
    k = len(ds.task_names)
    fig, axes = _grid(k)
    per_epoch = ds.loss_curve.shape[1] == ds.config.get("recipe", {}).get("max_epochs")
    for t, ax in enumerate(axes[:k]):
        ids = _first_finished(status, task, t, max_nets_per_task)
        ax.set_title(f"{ds.task_names[t]} ({len(ids)} nets)", fontsize=10)
        ax.set_xlabel("epoch" if per_epoch else "logged interval")
        if t % 3 == 0:
            ax.set_ylabel("training loss")
        if not ids.size:
            ax.text(0.5, 0.5, "no finished nets", ha="center", va="center",
                    transform=ax.transAxes)
            continue
        curves = np.asarray(ds.loss_curve.oindex[ids], np.float64)  # (R, E)
        curves[~(curves > 0)] = np.nan  # log axis; NaN after the stop stays NaN
        alive = np.isfinite(curves).sum(axis=0)
        cols = np.flatnonzero(alive > 0)
        if not cols.size:
            ax.text(0.5, 0.5, "no finite losses", ha="center", va="center",
                    transform=ax.transAxes)
            continue
        x = cols + 1
        q = np.nanquantile(curves[:, cols], [0.1, 0.25, 0.5, 0.75, 0.9], axis=0)
        c = _colour(t)
        ax.fill_between(x, q[0], q[4], color=c, alpha=0.15, linewidth=0, label="10-90 %")
        ax.fill_between(x, q[1], q[3], color=c, alpha=0.35, linewidth=0, label="25-75 %")
        ax.plot(x, q[2], color=c, linewidth=1.6, label="median")
        _loss_axis(ax, q[0].min(), q[4].max())
        share = ax.twinx()
        share.plot(x, 100 * alive[cols] / len(ids), color="0.45", linestyle="--", linewidth=1,
                   label="% still training")
        share.set_ylim(0, 105)
        share.tick_params(labelsize=8, colors="0.45")
        if t == 0:
            lines = ax.get_legend_handles_labels()
            extra = share.get_legend_handles_labels()
            ax.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=7, loc="upper right")
    fig.suptitle(f"{ds.attrs['dataset']}: training loss per task (nets still training)")
    _save(fig, path)


def plot_epochs(ds: Dataset, status, task, path: Path):
    """Per task: histogram of the epochs converged nets needed; counts per status in the
    title."""
    from matplotlib.ticker import MaxNLocator

    k = len(ds.task_names)
    fig, axes = _grid(k)
    epochs = ds.store.read_array("epochs")
    recipe = ds.config.get("recipe", {})
    cap = recipe.get("max_epochs") or max(int(epochs.max(initial=1)), 1)
    # Nets are checked every check_every epochs: bins of whole check intervals, <= 40 bins.
    every = max(int(recipe.get("check_every") or 1), 1)
    width = every * math.ceil(cap / every / 40)
    bins = np.arange(0, cap + width, width) + 0.5 * every
    for t, ax in enumerate(axes[:k]):
        mine = task == t
        conv = epochs[mine & (status == STATUS_CONVERGED)]
        done = int((mine & (status != STATUS_PENDING)).sum())
        ax.set_title(f"{ds.task_names[t]}\nconverged {conv.size}/{done}, capped "
                     f"{int((mine & (status == STATUS_CAPPED)).sum())}, diverged "
                     f"{int((mine & (status == STATUS_DIVERGED)).sum())}", fontsize=9)
        ax.set_xlabel("epochs to converge")
        if t % 3 == 0:
            ax.set_ylabel("nets")
        ax.set_xlim(0, cap + every)
        if conv.size:
            ax.hist(conv, bins=bins, color=_colour(t), alpha=0.85)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            ax.text(0.5, 0.5, "no net converged", ha="center", va="center", color="0.4",
                    transform=ax.transAxes)
            ax.set_yticks([])
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{ds.attrs['dataset']}: epochs to converge (cap {cap})")
    _save(fig, path)


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` (R, P) projected on their first two principal components: ((R, 2),
    explained-variance share of each (2,)). Centred, via numpy's SVD."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    var = s**2
    share = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    proj = u[:, :2] * s[:2]
    if proj.shape[1] < 2:
        proj = np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))
        share = np.pad(share, (0, 2 - share.size))
    return proj, share


def plot_weights_pca(ds: Dataset, status, task, path: Path, max_points: int = 2000):
    """Final weights of finished nets with finite weights, on their first two principal
    components, one colour per task."""
    from matplotlib.figure import Figure

    k = len(ds.task_names)
    per_task = max(1, max_points // max(k, 1))
    ids = np.sort(np.concatenate([_first_finished(status, task, t, per_task)
                                  for t in range(k)] or [np.zeros(0, np.int64)]))
    w = ds.load_weights(ids) if ids.size else np.zeros((0, ds.n_params), np.float32)
    finite = np.isfinite(w).all(axis=1)
    ids, w = ids[finite], w[finite]
    fig = Figure(figsize=(6.5, 5.2), layout="constrained")
    ax = fig.subplots()
    if len(ids) < 3:
        ax.text(0.5, 0.5, "fewer than 3 finished nets with finite weights", ha="center",
                va="center", transform=ax.transAxes)
    else:
        proj, share = pca_2d(w)
        for t in range(k):
            mine = task[ids] == t
            if mine.any():
                ax.scatter(proj[mine, 0], proj[mine, 1], s=8 if len(ids) > 300 else 24,
                           alpha=0.65, color=_colour(t),
                           label=f"{ds.task_names[t]} ({int(mine.sum())})", linewidths=0)
        ax.set_xlabel(f"PC 1 ({100 * share[0]:.1f} % of variance)")
        ax.set_ylabel(f"PC 2 ({100 * share[1]:.1f} % of variance)")
        ax.legend(fontsize=8, markerscale=2)
        ax.grid(True, alpha=0.3)
    ax.set_title(f"{ds.attrs['dataset']}: final weights of {len(ids)} nets, PCA")
    _save(fig, path)
