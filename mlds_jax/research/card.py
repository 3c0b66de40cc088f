"""The dataset card: a README.md and three figures written into the store, so a download
says what it holds, like the original MLDS downloads did.

``write_card(ds)`` writes ``README.md`` (what the dataset is, how it was trained, counts per
task and status, the learnability table, the parameter layout, how to load it, licence and
citation) and ``figures/``: ``loss_curves.png`` (median and quantile bands of the training
loss per task), ``epochs_to_converge.png`` (histograms per task) and ``weights_pca.png`` (the
final weights projected on their first two principal components, coloured by task).
matplotlib draws through its Agg canvas only (no pyplot, no GUI backend).
"""

from __future__ import annotations

import datetime
import io
import json
import math
from pathlib import Path

import numpy as np

from mlds_jax.research.reader import Dataset
from mlds_jax.store.schema import (
    STATUS_CAPPED,
    STATUS_CONVERGED,
    STATUS_DIVERGED,
    STATUS_NAMES,
    STATUS_PENDING,
    StoreError,
    write_atomic,
)

LICENCE = "CC BY-SA 4.0"
LICENCE_URL = "https://creativecommons.org/licenses/by-sa/4.0/"
MLDS_BIBTEX = """@article{clemens2021mlds,
  title   = {{MLDS}: A Dataset for Weight-Space Analysis of Neural Networks},
  author  = {Clemens, John},
  journal = {arXiv preprint arXiv:2104.10555},
  year    = {2021}
}"""
FIGURES = {
    "loss_curves": "loss_curves.png",
    "epochs": "epochs_to_converge.png",
    "pca": "weights_pca.png",
}
# What the tasks of the released datasets do (shared/SPEC.md); others are named only.
TASK_NOTES = {
    "SingleDirectMachine": "1-bit register: a write stores bit 0 of the byte; pin 0 shows it",
    "SingleInvertMachine": "1-bit register: a write stores bit 0 of the byte; pin 0 shows its inverse",
    "EightBitMachine": "8-bit register: a write stores the byte; the pins show it",
    "SimpleXORMachine": "8-bit register: a write XORs the byte into it; the pins show it",
    "ParityMachine": "1-bit parity: a write flips it by the byte's parity; pin 0 shows it",
}


def write_card(ds: Dataset, out_dir: str | Path | None = None, *, max_nets_per_task: int = 1000,
               max_points: int = 2000, date: datetime.date | None = None) -> Path:
    """Write README.md and figures/ into ``out_dir`` (default: the store itself), dated
    ``date`` (default: today; ``mlds release`` passes the store card's, for the same bytes).

    Loss curves use the first ``max_nets_per_task`` finished nets of each task (the lowest
    ids: a smaller tier of the same dataset); the projection at most ``max_points`` finished
    nets, spread evenly over tasks. Returns the README's path."""
    out_dir = Path(out_dir) if out_dir is not None else ds.path
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    status = ds.store.read_array("status")
    task = ds.tasks()
    plot_loss_curves(ds, status, task, figures / FIGURES["loss_curves"], max_nets_per_task)
    plot_epochs(ds, status, task, figures / FIGURES["epochs"])
    plot_weights_pca(ds, status, task, figures / FIGURES["pca"], max_points)
    readme = out_dir / "README.md"
    write_atomic(readme, render_readme(ds, status, task, max_nets_per_task=max_nets_per_task,
                                       max_points=max_points, date=date).encode())
    return readme


# ---- figures ------------------------------------------------------------------------------


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


# ---- README -------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list], align: str | None = None) -> str:
    """A Markdown table; ``align`` one letter per column, l or r (default: first column
    left, the rest right, for tables of counts)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(x: float, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def render_readme(ds: Dataset, status=None, task=None, *, max_nets_per_task: int = 1000,
                  max_points: int = 2000, date: datetime.date | None = None) -> str:
    """The card's Markdown text (figures referenced under figures/). A store named
    ``*.zarr.zip`` is the tier ``mlds release`` is building: the card says how to read the
    archive."""
    status = ds.store.read_array("status") if status is None else status
    task = ds.tasks() if task is None else task
    cfg, net = ds.config, ds.network
    if "images" in cfg:
        raise StoreError(f"{ds.attrs['dataset']}: the card of a DS4 (image) dataset is not "
                         f"written yet; `mlds info` and `mlds verify` work")
    recipe = cfg.get("recipe", {})
    name = ds.attrs["dataset"]
    n, k = len(ds), len(ds.task_names)
    finished = int((status != STATUS_PENDING).sum())
    cell = str(net.get("cell", "?")).upper()
    head = " -> ".join([f"Linear({a}, {b})" for a, b in zip(
        (net["hidden_size"], *net["head_sizes"]), (*net["head_sizes"], net["output_size"]))])
    head = head.replace(") -> ", f") -> {net['activation']} -> ")
    today = date or datetime.date.today()
    released = ds.path.name.endswith(".zarr.zip")
    out = [f"# {name}: {n:,} trained {cell} networks on {k} tasks", ""]
    out += [
        f"A dataset of neural networks for weight-space analysis, in the manner of MLDS "
        f"(Clemens, 2021): every network has the same architecture and is trained on "
        f"tightly controlled data; only the weights differ. Net `n` is trained on task "
        f"`n mod {k}` from a seed derived from (dataset seed {cfg.get('seed')}, `n`), so the "
        f"first `{k} * m` nets form the tier of `m` nets per task.",
        "",
        f"- **{n:,} nets**, {finished:,} finished, {n - finished:,} not trained yet",
        f"- **Network** ({ds.n_params:,} parameters): {cell}(input {net['input_size']}, hidden "
        f"{net['hidden_size']}, {net['num_layers']} layers) -> {head}; one logit per output "
        f"(PyTorch equations and parameter layout, so every net loads unchanged into "
        f"`torch.nn.{cell}` + `torch.nn.Linear`)",
        f"- **Format**: a Zarr v3 group "
        f"({'in one zip file, read in place' if released else 'this directory'}), weights "
        f"as float32 `[N, P]`",
        f"- Made with mlds-jax {ds.attrs.get('package_version')}; card written {today}",
        "",
        "## Tasks", "",
        _table(["index", "task", "what it does"],
               [[t, f"`{tn}`", TASK_NOTES.get(tn, "")] for t, tn in enumerate(ds.task_names)],
               "rll"),
        "",
        "## Counts per task and status", "",
    ]
    rows = []
    for t, tn in enumerate(ds.task_names):
        mine = task == t
        rows.append([tn] + [int((mine & (status == c)).sum()) for c in sorted(STATUS_NAMES)]
                    + [int(mine.sum())])
    rows.append(["**all**"] + [int((status == c).sum()) for c in sorted(STATUS_NAMES)] + [n])
    out += [_table(["task"] + [STATUS_NAMES[c] for c in sorted(STATUS_NAMES)] + ["total"], rows),
            "", "converged: reached the validation threshold; capped: stopped at the epoch cap "
            "below it; diverged: the loss became non-finite; pending: not trained yet.", ""]
    out += ["## Learnability", ""]
    lrows = [[s.task, f"{s.finished}/{s.total}",
              f"{s.converged} ({_num(100 * s.converged_share, '.0f')} %)", s.capped, s.diverged,
              _num(s.median_epochs, ".0f"), _num(s.p90_epochs, ".0f"),
              _num(s.mean_val_accuracy, ".4f"), _num(s.mean_criterion_accuracy, ".4f"),
              _num(s.mean_sequences_right, ".3f")] for s in ds.summary()]
    acc_name = ds.accuracy_names[0] if ds.accuracy_names else "accuracy"
    criterion = ", ".join(f"`{c}`" for c in ds.attrs["criterion_names"])
    out += [_table(["task", "finished", "converged", "capped", "diverged", "median epochs",
                    "p90 epochs", f"mean {acc_name}", "mean criterion accuracy",
                    "mean sequences right"], lrows), "",
            f"A net is converged when {criterion} reached the threshold "
            f"{recipe.get('threshold')} on validation sequences of {recipe.get('val_length')} "
            f"steps (training: {recipe.get('train_length')}): every output right at that rate, "
            f"not the mean over outputs. Epochs are those of converged nets (cap "
            f"{recipe.get('max_epochs')}); the accuracies are means over finished nets: "
            f"`{acc_name}`, the criterion (its lowest column), and the share of validation "
            f"sequences with every output right.", "",
            f"![training loss per task](figures/{FIGURES['loss_curves']})", "",
            "Training loss per epoch: median and 25-75 % / 10-90 % bands over the nets still "
            f"training at that epoch (first {max_nets_per_task:,} finished nets per task); "
            "dashed: the share "
            "still training.", "",
            f"![epochs to converge](figures/{FIGURES['epochs']})", "",
            f"![final weights, PCA](figures/{FIGURES['pca']})", "",
            f"Final weights of finished nets (up to {max_points:,}, spread over tasks) projected "
            "on their "
            "first two principal components.", ""]
    out += ["## How it was trained", "",
            "Each net is trained alone in the sense that matters: its initial weights and "
            "data order depend only on (dataset seed, net id), never on which nets trained "
            "beside it (thousands at once, with `jax.vmap`). Every net stops when its "
            "validation accuracy reaches the threshold (checked every `check_every` epochs) or "
            "at the epoch cap.", "",
            _table(["recipe", "value"], [[f"`{key}`", f"`{v}`"] for key, v in recipe.items()],
                   "ll"),
            "", "<details><summary>The full resolved config (as recorded in "
            "<code>zarr.json</code>)</summary>", "", "```json",
            json.dumps(cfg, indent=2), "```", "", "</details>", ""]
    if "seed_scheme" in ds.attrs:
        out += [f"Seeds: {ds.attrs['seed_scheme']}.", ""]
    out += ["## Files", "",
            _table(["array", "shape, dtype", "what"], [
                ["`weights`", f"`[{n}, {ds.n_params}]` float32", "final parameters, flat (layout below)"],
                ["`initial_weights`", f"`[{n}, {ds.n_params}]` float32", "parameters at initialisation"],
                ["`task`", f"`[{n}]` int32", "task index (table above)"],
                ["`seed`", f"`[{n}]` uint64", "the seed net n was derived from"],
                ["`status`", f"`[{n}]` uint8", "0 pending, 1 converged, 2 capped, 3 diverged"],
                ["`epochs`", f"`[{n}]` int32", "epochs trained"],
                ["`loss_curve`", f"`[{n}, {ds.loss_curve.shape[1]}]` float32",
                 "training loss per epoch, NaN after the stop"],
                ["`val_accuracy`", f"`[{n}, {len(ds.accuracy_names)}]` float32",
                 f"final validation accuracy ({', '.join(ds.accuracy_names)})"],
                ["`checksums/rows`", f"`[{n}, 2]` int64",
                 "crc32c of each row of weights and initial_weights"],
            ], "lll"), "",
            f"Arrays are chunked along the net axis ({ds.chunk_rows} rows per chunk); the "
            + (f"weights are blosc-compressed (zstd, bit shuffle) for the release: `mlds "
               f"release --unpack {ds.path.name} --out DIR` (or `unzip {ds.path.name} -d DIR "
               f"&& mlds pack DIR`) gives the store with one memory-mappable `[N, P]` block."
               if released else "weights are uncompressed raw float32"
               + (", packed as one block (memory-mappable as `[N, P]`)." if ds.store.packed
                  else " (`mlds pack` makes them one memory-mappable `[N, P]` block).")), "",
            "## Loading", "", "```python", "import mlds_jax", "",
            f'ds = mlds_jax.open_dataset("{ds.path.name}")',
            "meta = ds.metadata()                  # pandas DataFrame, one row per net",
            f'ids = ds.select("task={ds.task_names[-1] if k else 0}&status=converged")',
            "W = ds.load_weights(ids)              # (len(ids), P) float32",
            "model = ds.to_torch(int(ids[0]))      # torch.nn.Module, (B, T, in) -> (B, T, out)",
            "```", "",
            "Without mlds-jax, any Zarr v3 reader works: "
            + (f'`zarr.open_group(zarr.storage.ZipStore("{ds.path.name}", mode="r"), '
               f'mode="r")["weights"][n]`' if released else
               f'`zarr.open_group("{ds.path.name}", mode="r")["weights"][n]`')
            + " is net `n`'s flat "
            "vector; `attrs[\"layout\"]` of the group gives each tensor's place in it.", "",
            "## Parameter layout", "",
            "Each row of `weights` is the concatenation, in this order, of the flattened "
            "tensors of the equivalent PyTorch module's `state_dict`:", "",
            _table(["state_dict key", "shape", "offset", "size"],
                   [[f"`{s['torch_key']}`", "x".join(map(str, s["shape"])), s["offset"],
                     math.prod(s["shape"])] for s in ds.layout], "lrrr"), "",
            *_analysis_lines(ds),
            "## Integrity", "",
            "`mlds verify PATH` re-reads every chunk, compares the crc32c checksums written "
            "with the data, and checks that status, epochs and loss curves agree.", "",
            "## Licence", "",
            f"The dataset is released under [{LICENCE}]({LICENCE_URL}), as the original MLDS "
            "datasets were: share and adapt it, with attribution, under the same licence.", "",
            "## How to cite", "",
            "Cite this dataset and the MLDS paper whose design it follows:", "", "```bibtex",
            f"@misc{{{_bibkey(name)}{today.year},",
            f"  title        = {{{{{name}}}: {n} trained {cell} networks on {k} tasks}},",
            "  author       = {{MLDS-JAX contributors}},",
            f"  year         = {{{today.year}}},",
            f"  note         = {{Generated with mlds-jax {ds.attrs.get('package_version')}, "
            f"dataset seed {cfg.get('seed')}}},",
            f"  howpublished = {{Zarr v3 store, licence {LICENCE}}}",
            "}", "", MLDS_BIBTEX, "```", ""]
    return "\n".join(out)


def _analysis_lines(ds: Dataset) -> list[str]:
    """The card's analysis section when `mlds analyze` wrote analysis/analysis.json. The
    seam points one way: the analysis writes that file (and calls `write_card`); the card
    reads the file and never imports the analysis."""
    path = ds.path / "analysis" / "analysis.json"
    if not path.exists():
        return []
    return analysis_section(json.loads(path.read_text()))


def _bibkey(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


# ---- the analysis section: rendered from analysis/analysis.json, which `mlds analyze` writes


def _fmt(x, fmt=".3f"):
    return "-" if x is None else format(x, fmt)


def analysis_section(result: dict) -> list[str]:
    """Markdown lines for the dataset card from an ``analysis.json`` dict."""
    s = result["split"]
    lines = ["## Weight-space analysis (`mlds analyze`)", "",
             f"{s['nets']} finished nets; fixed split (seed {s['seed']}, "
             f"{s['counts']['train']} train / {s['counts']['validation']} validation / "
             f"{s['counts']['test']} test, from the net id: `mlds_jax.analysis.split_of`), "
             "shipped in `analysis/` with per-position normalisation statistics. Every number "
             "is in `analysis/analysis.json`.", "",
             "Task identification on the test split (accuracy, 95 % Wilson interval):", "",
             "| encoder | accuracy | 95 % CI | chance |", "|---|---|---|---|"]
    for k, v in result["task_identification"].items():
        lines.append(f"| {k} | {_fmt(v['accuracy'])} | {_fmt(v['ci95'][0], '.2f')}-"
                     f"{_fmt(v['ci95'][1], '.2f')} | {_fmt(v['chance'], '.2f')} |")
    lines += ["", "Clustering by task (all nets):", "",
              "| encoding | within/between distance | silhouette | k-means ARI | 1-NN accuracy |",
              "|---|---|---|---|---|"]
    for k, v in result["clustering"].items():
        lines.append(f"| {k} | {_fmt(v['distance_ratio'])} | {_fmt(v['silhouette'])} | "
                     f"{_fmt(v['kmeans_ari'])} | {_fmt(v['nn1_accuracy'])} |")
    if "pairs" in result:
        p = result["pairs"]
        lines += ["", f"Twins (DS2 net n against DS1 net n, {p['n_pairs']} pairs): trigger "
                  "detection on the test split:", "",
                  "| detector | ROC-AUC | cross-entropy | accuracy |", "|---|---|---|---|"]
        for k, v in p["detection"].items():
            lines.append(f"| {k} | {_fmt(v['roc_auc'])} | {_fmt(v['cross_entropy'])} | "
                         f"{_fmt(v['accuracy'])} |")
        d = p["divergence"]["all"]
        lines += ["", f"Median twin distance over the median distance between two nets of "
                  f"the same machine: {_fmt(d['ratio_median'])} (whole vector)."]
    lines += [""] + [f"![projection](analysis/{f})" for f in result["figures"]] + [""]
    return lines
