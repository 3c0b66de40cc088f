"""Does throughput hold as the dataset grows? `mlds generate` end to end (training,
validation, store writes, packing) for two DS1 tiers, each in a fresh process, same recipe.

    python benchmarks/tiers.py                       # DS1-100 and DS1-1000, 40 epochs per net
    python benchmarks/tiers.py --per-task 20 200 --epochs 40
    python benchmarks/tiers.py --learnability out/ds1-learn.zarr   # + the full-DS1 projection
    python benchmarks/tiers.py --per-task 200 --set recipe.train_length=32   # another recipe

Every net trains exactly `--epochs` epochs (the check interval is the cap, so the first
validation, where a net may stop, is at the cap), so both tiers do the same work per net,
whatever the machines learn and when, and nets per hour compare directly.
Slots come from the memory budget (run.memory_budget_mb) as in a real run, so memory is
bounded by the slot budget, not by the tier. Reported per tier: nets, slots, wall seconds,
compile seconds (the time by which steps that compiled, the first and any after a
population shrank, exceed the median step: paid once per population size, minutes against
a release run's hours), nets/h over the whole run and without the compiles, and peak RSS.

With --learnability STORE (a DS1 store trained with the release recipe, e.g. the DS1
learnability run of docs/recipe-ds1-ds2.md) it also projects the time for all 50,000 DS1
nets on this machine: the store's mean epochs per net (capped nets count their cap) times
the largest tier's seconds per net-epoch without compiles.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

def one_tier(per_task: int, epochs: int, out: str, overrides: tuple[str, ...] = ()) -> dict:
    from mlds_jax.config.load import load_config
    from mlds_jax.generate import generate

    # Every net must train exactly `epochs` epochs, also where the release recipe gives a
    # machine its own cap or where nets converge at different epochs: one check, at the cap.
    # A machine's own cap is set to `epochs` too (as an override, so that the check interval
    # is validated against it: a cap of 1,500 is no multiple of a 40-epoch check).
    own_caps = [name for name, values in load_config("ds1", list(overrides)).task_recipes
                if any(k == "max_epochs" for k, _ in values)]
    cfg = load_config("ds1", [*overrides, f"recipe.max_epochs={epochs}",
                              f"recipe.check_every={epochs}",
                              *(f"recipe.task.{name}.max_epochs={epochs}" for name in own_caps)])
    marks: dict = {}

    def on_start(total, stored, slots):
        marks.update(total=total, slots=slots, t0=time.perf_counter())

    steps: list[float] = []

    def on_step(running, max_epoch):
        steps.append(time.perf_counter())

    report = generate(cfg, out, per_task, on_start=on_start, on_step=on_step)
    took = np.diff([marks["t0"], *steps])
    typical = float(np.median(took[1:])) if len(took) > 1 else 0.0
    # The first step always compiles; later ones only after the population shrank.
    slow = np.arange(len(took)) == 0
    slow |= took > 2 * typical
    compile_s = float(np.clip(took - typical, 0, None)[slow].sum())
    return {
        "nets": report.total, "slots": report.slots, "epochs": epochs, "steps": len(steps),
        "seconds": report.seconds, "compile_s": compile_s,
        "nets_per_h": report.total * 3600 / report.seconds,
        "nets_per_h_no_compile": report.total * 3600 / (report.seconds - compile_s),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-task", type=int, nargs="+", default=[20, 200])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--learnability", help="DS1 store for the full-DS1 projection")
    ap.add_argument("--nets", type=int, default=50_000, help="nets to project for")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a ds1 recipe key for the tiers (repeatable), e.g. "
                    "recipe.train_length=32 to time another recipe beside the release one")
    ap.add_argument("--cap", type=int, help="project for this epoch cap (a store trained "
                    "with a higher one: each net counts min(its epochs, cap); exact when no "
                    "net converged between the two)")
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one_tier(args.one, args.epochs, args.out, tuple(args.overrides))))
        return

    from rich.console import Console
    from rich.table import Table

    rows = []
    for per_task in args.per_task:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, __file__, "--one", str(per_task), "--epochs",
                   str(args.epochs), "--out", f"{tmp}/ds1.zarr",
                   *(f"--set={o}" for o in args.overrides)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  DS1-{rows[-1]['nets']}: {rows[-1]['nets_per_h']:,.0f} nets/h", flush=True)
    table = Table(title=f"mlds generate ds1, {args.epochs} epochs per net")
    for col in ("tier", "slots", "steps", "wall s", "compile s", "nets/h",
                "nets/h without compiles", "peak MB"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"DS1-{r['nets']}", str(r["slots"]), str(r["steps"]), f"{r['seconds']:.0f}",
                      f"{r['compile_s']:.1f}", f"{r['nets_per_h']:,.0f}",
                      f"{r['nets_per_h_no_compile']:,.0f}", f"{r['peak_mb']:,.0f}")
    Console(width=120).print(table)
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(f"nets/h DS1-{b['nets']} / DS1-{a['nets']}: "
              f"{b['nets_per_h'] / a['nets_per_h']:.3f} (whole run), "
              f"{b['nets_per_h_no_compile'] / a['nets_per_h_no_compile']:.3f} (without compiles)")
    if args.learnability:
        project(args.learnability, rows[-1], args.nets, args.cap)


def project(store: str, tier: dict, n_nets: int, cap: int | None = None) -> None:
    """Full-DS1 time: the store's mean epochs per net at the measured cost per net-epoch."""
    import mlds_jax

    ds = mlds_jax.open_dataset(store)
    meta = ds.metadata()
    done = meta[meta["status"] > 0]
    recipe = ds.config["recipe"]
    # Each net's epochs as trained (a machine may have its own cap); --cap projects a lower one.
    epochs = done["epochs"].clip(upper=cap) if cap else done["epochs"]
    cap = cap or "per net as stored"
    per_task = epochs.groupby(done["task"]).mean()  # machines weigh equally
    mean_epochs = float(per_task.mean())
    seq_steps = mean_epochs * recipe["train_sequences"] * recipe["train_length"]
    s_per_net_epoch = 3600 / tier["nets_per_h_no_compile"] / tier["epochs"]
    hours = n_nets * mean_epochs * s_per_net_epoch / 3600
    print(f"projection from {store} ({len(done)} nets, cap {cap}): mean "
          f"{mean_epochs:.0f} epochs = {seq_steps / 1e6:.2f} M seq-steps per net; at "
          f"{s_per_net_epoch * 1e3:.2f} ms per net-epoch (DS1-{tier['nets']}, end to end) "
          f"all {n_nets:,} DS1 nets take {hours:.1f} h on this machine")


if __name__ == "__main__":
    main()
