"""What `mlds info` prints: a store's per-task table (DS1-DS3), its automaton-size bins
(DS3), or DS4's trigger families and targets, as rich tables on the terminal."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from mlds_jax.research import trojans
from mlds_jax.research.reader import Dataset, size_bin_summary
from mlds_jax.store.schema import StoreError

WIDTH = 160


def _num(x, fmt: str) -> str:
    return "-" if x is None or math.isnan(x) else format(x, fmt)


def _table(title: str, columns, rows, numbers: bool = True) -> Table:
    """Columns after the first are right-aligned when ``numbers``."""
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="right" if numbers and i else "left")
    for row in rows:
        table.add_row(*map(str, row))
    return table


def print_info(ds: Dataset, path: str, twin: Dataset | None = None) -> None:
    """Print the tables of ``ds`` (opened from ``path``); ``twin``: DS4's other store."""
    console = Console(width=WIDTH)
    if trojans.is_image_dataset(ds):
        for table in ds4_tables(ds, path, twin):
            console.print(table)
        return
    if twin is not None:
        raise StoreError("--paired is for DS4 stores (clean and trojaned twins); "
                         "`mlds analyze DS1 --paired DS2` compares DS1 and DS2")
    cfg = ds.config
    recipe = cfg.get("recipe", {})
    worst = "symbol acc" if "val_symbol_accuracy" in ds.accuracy_names else "worst pin"
    console.print(_table(
        f"{ds.attrs['dataset']} at {path} (seed {cfg.get('seed')}, converged: "
        f"{' and '.join(ds.attrs['criterion_names'])} >= {recipe.get('threshold')}, cap "
        f"{recipe.get('max_epochs')} epochs)",
        ("task", "finished", "converged", "capped", "diverged", "median epochs", "p90 epochs",
         "mean val acc", f"mean {worst}", "mean seqs right"),
        [(r.task, f"{r.finished}/{r.total}",
          f"{r.converged} ({_num(100 * r.converged_share, '.0f')}%)", r.capped, r.diverged,
          _num(r.median_epochs, ".0f"), _num(r.p90_epochs, ".0f"),
          _num(r.mean_val_accuracy, ".4f"), _num(r.mean_criterion_accuracy, ".4f"),
          _num(r.mean_sequences_right, ".3f")) for r in ds.summary()]))
    if "automata" in cfg:  # DS3: how learnability goes with the automaton's size
        console.print(_table(
            "by automaton size (states)",
            ("states", "automata", "finished", "converged", "median epochs"),
            [(b["states"], b["automata"], b["finished"],
              f"{b['converged']} ({_num(100 * b['share'], '.0f')}%)",
              _num(b["median_epochs"], ".0f")) for b in size_bin_summary(ds)]))


def ds4_tables(ds: Dataset, path: str, twin: Dataset | None = None) -> list[Table]:
    """DS4: per trigger family, then the targets. The twin rows come from ``twin`` when
    given, else from the analysis `mlds analyze` stored in this store (the clean one)."""
    trojaned = trojans.is_trojaned(ds)
    recipe = ds.config.get("recipe", {})
    twins = None
    if twin is not None:
        if not trojans.is_image_dataset(twin) or trojans.is_trojaned(twin) == trojaned:
            raise StoreError(f"--paired needs the {'clean' if trojaned else 'trojaned'} twin "
                             f"of {ds.attrs['dataset']}; {twin.attrs['dataset']} is not")
        twins = trojans.twin_summary(twin, ds) if trojaned else trojans.twin_summary(ds, twin)
    usable = "clean accuracy" + (" and attack success" if trojaned else "")
    families = _table(
        f"{ds.attrs['dataset']} at {path} ({'trojaned' if trojaned else 'clean'} twins, seed "
        f"{ds.config.get('seed')}; usable: {usable} >= {recipe.get('threshold')} after "
        f"{recipe.get('max_epochs')} epochs)",
        ("nets", "finished", "usable", "median clean acc", "lowest clean acc",
         "median attack success" if trojaned else "median trigger effect"),
        [(r.group, r.finished, r.usable, _num(r.median_clean, ".3f"), _num(r.min_clean, ".3f"),
          _num(r.median_asr, ".3f")) for r in trojans.trigger_rows(ds)])
    targets = _table("targets", ("what", "target", "measured", ""),
                     [[c.replace("**", "") for c in row] for row in trojans.target_rows(
                         ds, twins, trojans.stored_analysis(ds))], numbers=False)
    return [families, targets]
