"""The `mlds` command line: parses and validates, then calls the library."""

from __future__ import annotations

import os
import sys

import click

from mlds_jax.config.load import load_config
from mlds_jax.config.sections import ConfigError
from mlds_jax.store.schema import ConfigMismatchError, StoreError
from mlds_jax.train import compile_cache


class _Fail(click.ClickException):
    """A one-line error, exit status 1."""

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


class _Group(click.Group):
    """Every command ends in one line, never a traceback: a StoreError or OSError is the
    user's to fix and says how; anything else is a bug, shown in full with MLDS_DEBUG=1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (StoreError, ConfigError) as e:
            raise _Fail(str(e)) from None
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            raise _Fail(f"{where}{e.strerror or e}") from None
        except Exception as e:
            if os.environ.get("MLDS_DEBUG"):
                raise
            text = str(e).strip().splitlines()
            raise _Fail(f"unexpected {type(e).__name__}: {text[0] if text else ''} (a bug: "
                        f"MLDS_DEBUG=1 shows where; please report it)") from None


@click.group(cls=_Group)
@click.version_option(package_name="mlds-jax")
def main():
    """MLDS-JAX: datasets of trained neural networks."""
    compile_cache.enable()
    compile_cache.cpu_optimization()


@main.command()
@click.argument("config")
@click.option("--out", required=True, type=click.Path(), help="Store directory (Zarr v3 group).")
@click.option("--per-task", required=True, type=click.IntRange(min=1), help="Nets per task (tier).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. recipe.learning_rate=1e-3. Repeatable.")
@click.option("--slots", type=click.IntRange(min=1), help="Nets trained at once (default: memory budget).")
@click.option("--seed", type=click.IntRange(min=0), help="Dataset seed (overrides the config).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store, whatever it holds.")
@click.option("--replace-other-config", is_flag=True,
              help="Replace an existing store only if it was made with another config (or "
                   "another version's recipe values); resume it otherwise. For one writer: "
                   "not with --ids or --engine ray.")
@click.option("--ids", "id_range", metavar="A:B", callback=lambda c, p, v: _id_range(v),
              help="Train only nets A..B-1 of the tier (for job arrays): A and B multiples of "
                   "the store's chunk rows, or B past the end.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: train in this process; ray: one writer per worker of a Ray cluster "
                   "(pip install 'mlds-jax[ray]').")
@click.option("--address", help="--engine ray: the cluster to join ('auto', 'ray://HOST:10001'); "
                                "default: start one on this machine.")
@click.option("--workers", type=click.IntRange(min=1),
              help="--engine ray: workers (default: the cluster's CPUs or GPUs per worker).")
@click.option("--worker-cpus", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="--engine ray: CPUs each worker reserves.")
@click.option("--worker-gpus", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="--engine ray: GPUs each worker reserves (1: one worker per GPU).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def generate(config, out, per_task, overrides, slots, seed, overwrite, replace_other_config,
             id_range, engine, address, workers, worker_cpus, worker_gpus, progress):
    """Train the first PER_TASK nets of every task of CONFIG into the store at --out.

    CONFIG is a name from configs/ (ds1, smoke) or a TOML file. Rerunning the same command
    resumes; a larger --per-task extends the store. Any number of runs may fill one store
    at once (on one machine or many sharing a file system): each claims chunks of nets.
    """
    from tqdm import tqdm

    from mlds_jax import generate as gen
    from mlds_jax.signals import Interrupted, stop_signals

    overrides = list(overrides)
    if slots is not None:
        overrides.append(f"run.slots={slots}")
    if seed is not None:
        overrides.append(f"seed={seed}")
    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        raise _Fail(str(e)) from None
    from mlds_jax.train.models import choose_recurrence

    try:
        recurrence = choose_recurrence(cfg.network, cfg.run.recurrence)
    except ValueError as e:
        raise _Fail(f"run.recurrence={cfg.run.recurrence}: {e}") from None

    bar = None
    stored_now = total_nets = 0  # nets in the store as far as this run knows, for a stop

    def on_start(total, stored, n_slots):
        nonlocal bar, stored_now, total_nets
        stored_now, total_nets = stored, total
        if stored:
            click.echo(f"resuming: {stored} of {total} nets already in {out}; training {total - stored}")
        if stored == total:
            return
        how = "" if cfg.images is not None else f" ({recurrence} recurrence)"
        click.echo(f"{cfg.name}: training {total - stored} nets, {n_slots} at a time{how}")
        bar = tqdm(total=total, initial=stored, unit="net", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    in_training = ""

    def show():
        rate = bar.format_dict["rate"]
        per_hour = f"{rate * 3600:,.0f} nets/h, " if rate else ""
        bar.set_postfix_str(f"{per_hour}{in_training}", refresh=True)

    def on_progress(done):
        nonlocal stored_now
        stored_now += len(done)
        bar.update(len(done))
        show()

    def on_repair(ids, why):
        click.echo(f"retraining {len(ids)} damaged nets: {why}", err=True)

    waiting = False

    def on_wait(n):
        nonlocal waiting
        if not waiting:
            click.echo(f"waiting for {n} nets that other writers are training (a writer that "
                       f"dies has its nets taken over after {cfg.run.lease_seconds:g} s)",
                       err=True)
        waiting = True

    def on_step(running, max_epoch):
        nonlocal in_training
        in_training = f"{running} in training (up to epoch {max_epoch}/{cfg.recipe.max_epochs})"
        show()

    if replace_other_config and (id_range is not None or engine == "ray"):
        raise _Fail("--replace-other-config is for one writer: other writers of the store "
                    "would lose their work; use --overwrite once, before they start")
    if engine == "ray":
        if id_range is not None:
            raise _Fail("--ids is for plain runs (job arrays); --engine ray shares out the "
                        "whole tier itself")
        return _generate_on_ray(cfg, out, per_task, overwrite, progress, address=address,
                                workers=workers, worker_cpus=worker_cpus,
                                worker_gpus=worker_gpus)
    try:
        with stop_signals.installed():
            def run(replace):
                return gen.generate(cfg, out, per_task, ids=id_range, overwrite=replace,
                                    on_start=on_start, on_progress=on_progress,
                                    on_step=on_step, on_repair=on_repair, on_wait=on_wait,
                                    on_note=lambda line: click.echo(line, err=True))
            try:
                report = run(overwrite)
            except ConfigMismatchError as e:
                if not replace_other_config:
                    raise
                click.echo(f"{str(e).split('; ')[0]}: replacing it (--replace-other-config)",
                           err=True)
                report = run(True)
    except Interrupted as e:
        if bar is not None:
            bar.close()
        where = (f"{stored_now} of {total_nets} nets are in {out}" if total_nets
                 else f"nothing was trained into {out}")
        click.echo(f"stopped by {e}: {where}; rerun the same command to resume", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        # Straight out: XLA may still be compiling on its own threads, and tearing the
        # interpreter down under them crashes; every finished net is already on disk.
        os._exit(e.exit_code)
    except (StoreError, ConfigError) as e:
        raise _Fail(str(e)) from None
    finally:
        if bar is not None:
            bar.close()
    notes = ""
    if report.taken_over:
        notes += f", {report.taken_over} chunks taken over from dead writers"
    if report.dropped:
        notes += f", {report.dropped} nets dropped after their lease was lost"
    if report.resumed:
        notes += f", {report.resumed} resumed from a checkpoint"
    if report.checkpoints:
        notes += f", {report.checkpoints} checkpoints in {report.checkpoint_seconds:.1f} s"
    click.echo(f"done: {report.total} nets in {out} ({report.trained} trained now{notes}, "
               f"{report.seconds:.0f} s)")


@main.command()
@click.argument("path", type=click.Path())
@click.option("--paired", type=click.Path(), metavar="TWIN",
              help="DS4: the twin store (the trojaned one of a clean store, or the clean one), "
                   "for the twins' accuracy gap and attack success.")
def info(path, paired):
    """Per-task table of a store: nets, converged share, epochs, validation accuracy. On a
    DS4 store: per trigger family, and the dataset's targets."""
    from mlds_jax.research.info import print_info

    try:
        print_info(_open(path), path, _open(paired) if paired else None)
    except StoreError as e:
        raise _Fail(str(e)) from None


def _generate_on_ray(cfg, out, per_task, overwrite, progress, **engine):
    from tqdm import tqdm

    from mlds_jax.engines.ray_engine import generate_on_ray, ray_output_to_log
    from mlds_jax.signals import Interrupted, stop_signals

    bar = None
    stored_now = total_nets = 0
    with ray_output_to_log() as (term_out, term_err, log):

        def on_start(total, stored, n_workers):
            nonlocal bar, stored_now, total_nets
            stored_now, total_nets = stored, total
            if stored:
                click.echo(f"resuming: {stored} of {total} nets already in {out}", file=term_out)
            click.echo(f"{cfg.name}: training {total - stored} nets on {n_workers} Ray workers",
                       file=term_out)
            bar = tqdm(total=total, initial=stored, unit="net", disable=not progress,
                       file=term_err, dynamic_ncols=True, smoothing=0.1)

        def on_progress(stored):
            nonlocal stored_now
            stored_now = stored
            bar.update(stored - bar.n)

        try:
            with stop_signals.installed():
                report = generate_on_ray(cfg, out, per_task, overwrite=overwrite,
                                         on_start=on_start, on_progress=on_progress,
                                         on_note=lambda line: click.echo(line, file=term_err),
                                         **engine)
        except Interrupted as e:
            line = (f"stopped by {e}: " + (f"{stored_now} of {total_nets} nets are in {out}"
                                           if total_nets else f"nothing was trained into {out}")
                    + "; rerun the same command to resume")
            code = e.exit_code
        except (StoreError, ConfigError) as e:
            line, code = f"error: {e}", 1
        else:
            line, code = None, 0
        finally:
            if bar is not None:
                bar.close()
        if line is not None:
            # Ray's threads and atexit hooks may still talk to a dead node: out at once; every
            # finished net is on disk.
            where = f" (Ray's own output: {log})" if log and code == 1 else ""
            click.echo(line + where, file=term_err)
            if log and code != 1:
                os.unlink(log)
            term_out.flush()
            term_err.flush()
            os._exit(code)
        click.echo(f"done: {report.total} nets in {out} ({report.trained} trained now on "
                   f"{report.slots} workers, {report.seconds:.0f} s)", file=term_out)


def _id_range(value):
    if value is None:
        return None
    try:
        lo, hi = (int(x) for x in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not A:B (two integers)") from None
    if lo < 0 or hi <= lo:
        raise click.BadParameter(f"{value!r}: need 0 <= A < B")
    return lo, hi


def _open(path):
    from mlds_jax.research.reader import open_dataset

    try:
        return open_dataset(path)
    except StoreError as e:
        raise _Fail(str(e)) from None


@main.command()
@click.argument("path", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--nets", "selection", default="all", show_default=True, metavar="SELECTION",
              help="Which nets: ids and ranges (0:100, 1,5,9, 0:1000:5), task=NAME|INDEX[,...], "
                   "status=converged|capped|diverged|pending|finished[,...], 'all'; "
                   "join terms with & (task=ParityMachine&status=converged).")
@click.option("--format", "fmt", type=click.Choice(["npz", "safetensors", "torch"]),
              help="File format (default: from OUT's suffix, .npz .safetensors .pt).")
@click.option("--initial", is_flag=True, help="Also export the initial weights.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def export(path, out, selection, fmt, initial, overwrite):
    """Write the SELECTION of nets of the store at PATH to the file OUT, with the parameter
    layout and each net's metadata (npz, safetensors, or a PyTorch .pt of state_dicts)."""
    from pathlib import Path

    from mlds_jax.research import export as ex
    from mlds_jax.research.reader import SelectionError

    ds = _open(path)
    try:
        fmt = fmt or ex.format_for(out)
        ids = ds.select(selection)
        if not ids.size:
            raise SelectionError(f"selection {selection!r} matches no nets")
        if Path(out).exists() and not overwrite:
            raise _Fail(f"{out} exists; use --overwrite to replace it")
        ex.export(ds, ids, fmt, out, initial=initial, selection=selection)
    except (SelectionError, ValueError, StoreError) as e:
        raise _Fail(str(e)) from None
    click.echo(f"wrote {len(ids)} nets to {out} ({fmt})")


@main.command()
@click.argument("path", type=click.Path())
@click.option("--out", type=click.Path(), help="Directory for README.md and figures/ "
                                               "(default: the store itself).")
def card(path, out):
    """Write the dataset card into the store at PATH: README.md (what it is, how it was
    trained, counts, learnability, layout, licence, citation) and figures/*.png."""
    from mlds_jax.research.card import write_card

    ds = _open(path)
    try:
        readme = write_card(ds, out)
    except OSError as e:
        raise _Fail(f"cannot write the card: {e.strerror or e}") from None
    click.echo(f"wrote {readme} and {readme.parent / 'figures'}/")


@main.command()
@click.argument("path", type=click.Path())
def verify(path):
    """Re-read every chunk of the store at PATH: checksums, non-finite weights,
    status/epochs consistency. One line per problem, then a summary; exit 1 if any."""
    from mlds_jax.store.verify import verify as run_verify

    try:
        report = run_verify(path)
    except StoreError as e:
        raise _Fail(str(e)) from None
    for problem in report.problems:
        click.echo(str(problem))
    click.echo(report.summary())
    if not report.ok:
        sys.exit(1)


@main.command()
@click.argument("path", type=click.Path())
@click.option("--unpack", is_flag=True, help="Back to chunks of rows (to resume or extend).")
def pack(path, unpack):
    """Store the weights of the finished store at PATH as one [N, P] block each, so that
    open_dataset(PATH).weights_memmap() maps them zero-copy. `mlds generate` does this when a
    store is complete and undoes it before extending one; --unpack undoes it by hand."""
    from mlds_jax.store.rawrows import pack as run_pack

    try:
        done = run_pack(path, unpack=unpack)
    except StoreError as e:
        raise _Fail(str(e)) from None
    what = "unpacked" if unpack else "packed"
    click.echo(f"{what} {', '.join(done)} in {path}" if done else f"{path} is already {what}")


@main.command()
@click.argument("path", type=click.Path())
@click.option("--tiers", metavar="K1,K2,...", help="Nets per task of each tier, e.g. 100,500,1000.")
@click.option("--out", type=click.Path(), required=True,
              help="Directory for the archives and SHA256SUMS (--unpack: the store to make).")
@click.option("--unpack", is_flag=True, help="PATH is a release archive: extract it into the "
                                             "store --out and pack its weights for memory maps.")
def release(path, tiers, out, unpack):
    """Write each tier of the finished store at PATH (the first K x TIER nets, K tasks) as one
    reproducible zip, OUT/NAME-TIER.zarr.zip, readable in place, and their SHA-256 in
    OUT/SHA256SUMS (check with `sha256sum -c SHA256SUMS` in OUT)."""
    from mlds_jax import release as rel

    try:
        if unpack:
            if tiers is not None:
                raise _Fail("--unpack takes an archive and no --tiers")
            click.echo(f"unpacked {path} into {rel.unpack(path, out)} (weights packed)")
            return
        if tiers is None:
            raise _Fail("give --tiers, e.g. --tiers 100,500 (nets per task)")
        try:
            numbers = [int(t) for t in tiers.split(",")]
        except ValueError:
            raise _Fail(f"--tiers {tiers!r} is not a list of whole numbers, e.g. 100,500") from None
        for r in rel.release(path, numbers, out, log=click.echo):
            click.echo(f"{r.path}: {r.nets:,} nets, {r.size / 1e6:,.1f} MB, sha256 {r.sha256}")
    except StoreError as e:
        raise _Fail(str(e)) from None


@main.command()
@click.argument("path", type=click.Path())
@click.option("--paired", type=click.Path(),
              help="The twin store whose net n is net n's twin (DS2 for DS1; for DS4 the "
                   "trojaned store of the clean one, needed).")
@click.option("--out", type=click.Path(), help="Directory for analysis.json and figures "
                                               "(default: PATH/analysis, and the card is updated).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Split seed.")
@click.option("--nets", "selection", metavar="SELECTION",
              help="Analyse only these nets, e.g. 0:200 (default: every finished net).")
def analyze(path, paired, out, seed, selection):
    """Weight-space analysis of the store at PATH: fixed splits, task identification,
    clustering, training outcomes, and with --paired the twins' divergence and trigger
    detection. On DS4 (image) stores: trojan detection from weights, clean nets against
    their trojaned twins (--paired), for seen and held-out trigger families. Needs `pip install 'mlds-jax[analysis]'`."""
    try:
        from mlds_jax.analysis.report import analyze as run_analyze

        _open(path)
        if paired is not None:
            _open(paired)
        run_analyze(path, paired=paired, out=out, seed=seed, nets=selection, log=click.echo)
    except (ImportError, StoreError, ValueError) as e:  # SelectionError is a ValueError
        raise _Fail(str(e)) from None


if __name__ == "__main__":
    main()
