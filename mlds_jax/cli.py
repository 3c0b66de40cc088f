"""The `mlds` command line: parses and validates, then calls the library."""

from __future__ import annotations

import math
import sys

import click

from mlds_jax.config import ConfigError, load_config
from mlds_jax.store import StoreError


class _Fail(click.ClickException):
    """A one-line error, exit status 1."""

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


@click.group()
@click.version_option(package_name="mlds-jax")
def main():
    """MLDS-JAX: datasets of trained neural networks."""


@main.command()
@click.argument("config")
@click.option("--out", required=True, type=click.Path(), help="Store directory (Zarr v3 group).")
@click.option("--per-task", required=True, type=click.IntRange(min=1), help="Nets per task (tier).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. recipe.learning_rate=1e-3. Repeatable.")
@click.option("--slots", type=click.IntRange(min=1), help="Nets trained at once (default: memory budget).")
@click.option("--seed", type=click.IntRange(min=0), help="Dataset seed (overrides the config).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store made with another config.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def generate(config, out, per_task, overrides, slots, seed, overwrite, progress):
    """Train the first PER_TASK nets of every task of CONFIG into the store at --out.

    CONFIG is a name from configs/ (ds1, smoke) or a TOML file. Rerunning the same command
    resumes; a larger --per-task extends the store.
    """
    from tqdm import tqdm

    from mlds_jax import generate as gen

    overrides = list(overrides)
    if slots is not None:
        overrides.append(f"run.slots={slots}")
    if seed is not None:
        overrides.append(f"seed={seed}")
    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        raise _Fail(str(e)) from None

    bar = None

    def on_start(total, stored, n_slots):
        nonlocal bar
        if stored:
            click.echo(f"resuming: {stored} of {total} nets already in {out}; training {total - stored}")
        if stored == total:
            return
        click.echo(f"{cfg.name}: training {total - stored} nets, {n_slots} at a time")
        bar = tqdm(total=total, initial=stored, unit="net", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def on_progress(done):
        bar.update(len(done))
        rate = bar.format_dict["rate"]
        if rate:
            bar.set_postfix_str(f"{rate * 3600:,.0f} nets/h", refresh=True)

    try:
        report = gen.generate(cfg, out, per_task, overwrite=overwrite,
                              on_start=on_start, on_progress=on_progress)
    except (StoreError, ConfigError) as e:
        raise _Fail(str(e)) from None
    finally:
        if bar is not None:
            bar.close()
    click.echo(f"done: {report.total} nets in {out} ({report.trained} trained now, "
               f"{report.seconds:.0f} s)")


@main.command()
@click.argument("path", type=click.Path())
def info(path):
    """Per-task table of a store: nets, converged share, epochs, validation accuracy."""
    from rich.console import Console
    from rich.table import Table

    from mlds_jax.reader import open_dataset

    try:
        ds = open_dataset(path)
    except StoreError as e:
        raise _Fail(str(e)) from None
    cfg = ds.config
    recipe = cfg.get("recipe", {})
    table = Table(title=f"{ds.attrs['dataset']} at {path} (seed {cfg.get('seed')}, "
                        f"threshold {recipe.get('threshold')}, cap {recipe.get('max_epochs')} epochs)")
    for col in ("task", "finished", "converged", "capped", "diverged",
                "median epochs", "p90 epochs", "mean val acc"):
        table.add_column(col, justify="left" if col == "task" else "right")

    def num(x, fmt):
        return "-" if math.isnan(x) else format(x, fmt)

    for row in ds.summary():
        table.add_row(
            row.task, f"{row.finished}/{row.total}",
            f"{row.converged} ({num(100 * row.converged_share, '.0f')}%)",
            str(row.capped), str(row.diverged),
            num(row.median_epochs, ".0f"), num(row.p90_epochs, ".0f"),
            num(row.mean_val_accuracy, ".4f"),
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
