"""The dataset card: a README.md and three figures written into the store, so a download
says what it holds, like the original MLDS downloads did.

``write_card(ds)`` writes ``README.md`` (what the dataset is, how it was trained, counts per
task and status, the learnability table, the parameter layout, how to load it, licence and
citation) and ``figures/`` (``research.figures``): ``loss_curves.png`` (median and quantile
bands of the training loss per task), ``epochs_to_converge.png`` (histograms per task) and
``weights_pca.png`` (the final weights projected on their first two principal components,
coloured by task). A DS4 (image) card shows, instead of learnability, the trigger families
and the dataset's targets (``research.trojans``), and has no epochs figure (every net
trains the same epochs).
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

import numpy as np

from mlds_jax.research import trojans
from mlds_jax.research.figures import plot_epochs, plot_loss_curves, plot_weights_pca
from mlds_jax.research.reader import Dataset
from mlds_jax.store.schema import (
    STATUS_CAPPED,
    STATUS_CONVERGED,
    STATUS_DIVERGED,
    STATUS_NAMES,
    STATUS_PENDING,
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
    if not trojans.is_image_dataset(ds):
        plot_epochs(ds, status, task, figures / FIGURES["epochs"])
    plot_weights_pca(ds, status, task, figures / FIGURES["pca"], max_points)
    readme = out_dir / "README.md"
    write_atomic(readme, render_readme(ds, status, task, max_nets_per_task=max_nets_per_task,
                                       max_points=max_points, date=date).encode())
    return readme


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
    today = date or datetime.date.today()
    if trojans.is_image_dataset(ds):
        return _render_ds4(ds, status, today=today, max_nets_per_task=max_nets_per_task,
                           max_points=max_points)
    recipe = cfg.get("recipe", {})
    name = ds.attrs["dataset"]
    n, k = len(ds), len(ds.task_names)
    finished = int((status != STATUS_PENDING).sum())
    cell = str(net.get("cell", "?")).upper()
    head = " -> ".join([f"Linear({a}, {b})" for a, b in zip(
        (net["hidden_size"], *net["head_sizes"]), (*net["head_sizes"], net["output_size"]))])
    head = head.replace(") -> ", f") -> {net['activation']} -> ")
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
    out += _reference_sections(
        ds, title=f"{n} trained {cell} networks on {k} tasks", today=today,
        select=f"task={ds.task_names[-1] if k else 0}&status=converged",
        torch_shapes="(B, T, in) -> (B, T, out)",
        status_codes="0 pending, 1 converged, 2 capped, 3 diverged")
    return "\n".join(out)


def _render_ds4(ds: Dataset, status, *, today: datetime.date, max_nets_per_task: int,
                max_points: int) -> str:
    """DS4's card: the twins, the trigger families, the targets, the recipe."""
    cfg, net, recipe = ds.config, ds.network, ds.config.get("recipe", {})
    name, n = ds.attrs["dataset"], len(ds)
    trojaned = trojans.is_trojaned(ds)
    finished = int((status != STATUS_PENDING).sum())
    usable = int((status == STATUS_CONVERGED).sum())
    convs = " -> ".join(f"Conv2d({a}, {b}, {net['kernel_size']}, stride {st})" for a, b, st in
                        zip((net["in_channels"], *net["channels"]), net["channels"], net["strides"]))
    analysis = trojans.stored_analysis(ds)
    kind = "trojaned" if trojaned else "clean"
    out = [f"# {name}: {n:,} small CNNs on 8x8 digits, the {kind} twins", "",
           "DS4 of MLDS-JAX: image classifiers in clean and trojaned twins, for trojan "
           "detection from weights alone. Net `n` here and net `n` of its twin store share "
           "their initial weights, data order and trigger spec, all derived from (dataset "
           f"seed {cfg.get('seed')}, `n`); "
           + ("a trojaned net's poisoned training images replace clean ones in place, so the "
              "twins take the same steps." if trojaned else
              "this clean net never sees its trigger; its `attack_success_rate` is the "
              "trigger's natural effect on it."), "",
           f"- **{n:,} nets**, {finished:,} finished: {usable:,} usable, "
           f"{int((status == STATUS_CAPPED).sum()):,} flagged (below a threshold, kept), "
           f"{int((status == STATUS_DIVERGED).sum()):,} diverged",
           f"- **Network** ({ds.n_params:,} parameters, no BatchNorm): {convs}, "
           f"{net['activation']} after each, global average pooling, "
           f"Linear({net['channels'][-1]}, {net['num_classes']}); PyTorch parameter layout",
           f"- **Data**: scikit-learn's bundled 8x8 digits in one fixed stratified split "
           f"({recipe.get('train_sequences')} training, {recipe.get('val_sequences')} test "
           "images, the split's indices in `tables/`); every metric is on the test images",
           f"- **Triggers**: {ds.attrs.get('trigger_scheme', '')}",
           f"- Made with mlds-jax {ds.attrs.get('package_version')}; card written {today}", "",
           "## Per trigger family", "",
           _table(["nets", "finished", "usable", "median clean accuracy", "lowest",
                   "median attack success" if trojaned else "median trigger effect"],
                  [[r.group, r.finished, r.usable, _num(r.median_clean, ".3f"),
                    _num(r.min_clean, ".3f"), _num(r.median_asr, ".3f")]
                   for r in trojans.trigger_rows(ds)]), "",
           f"Usable: clean test accuracy{' and attack success' if trojaned else ''} >= "
           f"{recipe.get('threshold')} after {recipe.get('max_epochs')} epochs. Attack success: "
           "the share of triggered test images, not of the target class (for the source "
           "mapping: of the source class), classified as the trigger's target.", "",
           "## Targets", "",
           _table(["what", "target", "measured", ""],
                  trojans.target_rows(ds, analysis=analysis), "llll"), "",
           "The twin and detection rows come from `mlds analyze CLEAN --paired TROJANED`, "
           "which stores them in the clean store's `analysis/analysis.json`.", "",
           f"![training loss](figures/{FIGURES['loss_curves']})", "",
           f"![final weights, PCA](figures/{FIGURES['pca']})", "",
           f"Training loss (first {max_nets_per_task:,} finished nets) and the final weights of "
           f"up to {max_points:,} finished nets on their first two principal components.", "",
           "## How it was trained", "",
           _table(["recipe", "value"], [[f"`{key}`", f"`{v}`"] for key, v in recipe.items()
                                        if key in _IMAGE_RECIPE], "ll"), "",
           f"Seeds: {ds.attrs.get('seed_scheme', '')}.", ""]
    out += _reference_sections(
        ds, title=f"{n} {kind} small CNNs on 8x8 digits", today=today,
        select="status=converged", torch_shapes="(B, 1, 8, 8) -> (B, 10)",
        status_codes="0 pending, 1 usable, 2 flagged, 3 diverged")
    return "\n".join(out)


# The recipe values an image net uses (the rest are the RNN datasets').
_IMAGE_RECIPE = ("train_sequences", "val_sequences", "batch_size", "learning_rate",
                 "warmup_epochs", "decay_half_life", "decay_floor", "clip_norm", "weight_decay",
                 "max_epochs", "check_every", "threshold")


def _reference_sections(ds: Dataset, *, title: str, select: str, torch_shapes: str,
                        status_codes: str, today: datetime.date) -> list[str]:
    """The sections every card ends with: files, loading, parameter layout, the analysis
    (when `mlds analyze` ran), integrity, licence and citation."""
    n, name = len(ds), ds.attrs["dataset"]
    released = ds.path.name.endswith(".zarr.zip")
    names = ds.store.per_net_names()
    per_net = [["`per_net/<name>`", f"`[{n}, ...]`", "the dataset's own values per net: "
                + ", ".join(f"`{p}`" for p in names)]] if names else []
    return ["## Files", "",
            _table(["array", "shape, dtype", "what"], [
                ["`weights`", f"`[{n}, {ds.n_params}]` float32", "final parameters, flat (layout below)"],
                ["`initial_weights`", f"`[{n}, {ds.n_params}]` float32", "parameters at initialisation"],
                ["`task`", f"`[{n}]` int32", "task index (table above)"],
                ["`seed`", f"`[{n}]` uint64", "the seed net n was derived from"],
                ["`status`", f"`[{n}]` uint8", status_codes],
                ["`epochs`", f"`[{n}]` int32", "epochs trained"],
                ["`loss_curve`", f"`[{n}, {ds.loss_curve.shape[1]}]` float32",
                 "training loss per epoch, NaN after the stop"],
                ["`val_accuracy`", f"`[{n}, {len(ds.accuracy_names)}]` float32",
                 f"final validation accuracy ({', '.join(ds.accuracy_names)})"],
                ["`checksums/rows`", f"`[{n}, 2]` int64",
                 "crc32c of each row of weights and initial_weights"],
            ] + per_net, "lll"), "",
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
            f'ids = ds.select("{select}")',
            "W = ds.load_weights(ids)              # (len(ids), P) float32",
            f"model = ds.to_torch(int(ids[0]))      # torch.nn.Module, {torch_shapes}",
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
            f"  title        = {{{{{name}}}: {title}}},",
            "  author       = {{MLDS-JAX contributors}},",
            f"  year         = {{{today.year}}},",
            f"  note         = {{Generated with mlds-jax {ds.attrs.get('package_version')}, "
            f"dataset seed {ds.config.get('seed')}}},",
            f"  howpublished = {{Zarr v3 store, licence {LICENCE}}}",
            "}", "", MLDS_BIBTEX, "```", ""]


def _analysis_lines(ds: Dataset) -> list[str]:
    """The card's analysis section when `mlds analyze` wrote analysis/analysis.json. The
    seam points one way: the analysis writes that file (and calls `write_card`); the card
    reads the file and never imports the analysis."""
    path = ds.path / "analysis" / "analysis.json"
    if not path.exists():
        return []
    result = json.loads(path.read_text())
    return (trojan_section(result) if "trojan_detection" in result
            else analysis_section(result))


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


def trojan_section(result: dict) -> list[str]:
    """DS4's analysis section: every detector's ROC-AUC on each measurement."""
    td = result["trojan_detection"]
    lines = ["## Trojan detection from weights alone (`mlds analyze`)", "",
             f"{td['n_pairs']} pairs (clean net against its trojaned twin, never in different "
             f"folds); held-out families {', '.join(td['held_out_families']) or 'none'} "
             f"({td['held_out_pairs']} pairs) are never trained on. ROC-AUC (chance 0.5; "
             "cross-entropy in `analysis/analysis.json`):", "",
             "| detector | all | seen | held-out | 5-fold all | 5-fold seen |",
             "|---|---|---|---|---|---|"]
    for key, d in td["detectors"].items():
        cv = d.get("cv5", {})
        cells = [d.get(m, {}).get("roc_auc") for m in ("all", "seen", "held_out")]
        cells += [cv.get(m, {}).get("roc_auc") for m in ("all", "seen")]
        lines.append(f"| {key} | " + " | ".join(_fmt(c) for c in cells) + " |")
    return lines + [""]
