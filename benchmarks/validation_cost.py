"""What validation costs a real run, and what the screen saves: the population trainer at
the release recipe's check interval, validating every checked net in full against the
screen (`mlds_jax.train.population`: an eighth of the validation sequences first, the full
set only for nets whose bound reaches the threshold), alternating, in one process.

    python benchmarks/validation_cost.py                     # DS1's Parity and SimpleXOR nets
    python benchmarks/validation_cost.py --nets 40 --epochs 60 --repeats 2
    python benchmarks/validation_cost.py --config ds3 --nets 16 --epochs 20

The nets are ones that do not stop within `--epochs` (by default DS1's Parity and SimpleXOR,
which no recipe converges that early), so every step trains every slot and steps compare
directly: the time of a step is `check_every` epochs of every net plus one check. Reported
per mode: the median step (the first, which compiles, is apart), ms per net-epoch with its
check, and the full validations run (the screen's are those at the cap, where a capped
net's stored accuracies come from). The ratio is the screen's cost against full
validation's in the same run; `--check-every` widens the interval for a row without most
checks (training alone, nearly).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def one_run(cfg, data, nets: int, screen: bool) -> dict:
    import jax

    from mlds_jax.train import population

    pop = population.Population(cfg, data, nets, screen=screen)
    validated = []
    validated_step = population.validated_step

    def counting(cfg, data, state, need):
        jax.debug.callback(lambda n: validated.append(int(n.sum())), need)
        return validated_step(cfg, data, state, need)

    population.validated_step = counting
    try:
        stamps = [time.perf_counter()]
        for _ in pop.run(range(nets), on_step=lambda *_: stamps.append(time.perf_counter())):
            pass
    finally:
        population.validated_step = validated_step
    steps = np.diff(stamps)
    median = float(np.median(steps[1:]))
    return {"first_s": float(steps[0]), "median_s": median,
            "ms_per_net_epoch": 1e3 * median / (cfg.recipe.check_every * nets),
            "full_validations": sum(validated), "checks": nets * len(steps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="ds1")
    ap.add_argument("--tasks", nargs="*", default=None,
                    help="machines or automata to train (DS1 default: ParityMachine "
                         "SimpleXORMachine)")
    ap.add_argument("--nets", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=60, help="epochs per net (the cap)")
    ap.add_argument("--check-every", type=int, default=None,
                    help="check interval (default: the recipe's)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per mode, alternating")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="any other config override")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from mlds_jax.config.load import load_config
    from mlds_jax.generate import task_data

    tasks = args.tasks or (["ParityMachine", "SimpleXORMachine"] if args.config == "ds1" else None)
    overrides = list(args.overrides)
    if tasks:
        overrides.append("tasks=[" + ", ".join(f'"{t}"' for t in tasks) + "]")
    base = load_config(args.config, overrides)
    own_caps = [name for name, values in base.task_recipes
                if any(k == "max_epochs" for k, _ in values)]
    overrides += [f"recipe.max_epochs={args.epochs}",
                  *(f"recipe.task.{name}.max_epochs={args.epochs}" for name in own_caps)]
    if args.check_every:
        overrides.append(f"recipe.check_every={args.check_every}")
    cfg = load_config(args.config, overrides)
    data = task_data(cfg)
    rows = {True: [], False: []}
    for _ in range(args.repeats):
        for screen in (False, True):
            rows[screen].append(one_run(cfg, data, args.nets, screen))
    table = Table(title=f"{cfg.name}: {args.nets} nets x {args.epochs} epochs, a check every "
                        f"{cfg.recipe.check_every} ({', '.join(cfg.tasks)})")
    for col in ("validation", "first step s", "median step s", "ms per net-epoch",
                "full validations / checks", "x full"):
        table.add_column(col, justify="right")
    full_ms = np.median([r["ms_per_net_epoch"] for r in rows[False]])
    for screen, name in ((False, "full at every check"), (True, "screened")):
        for r in rows[screen]:
            table.add_row(name, f"{r['first_s']:.1f}", f"{r['median_s']:.2f}",
                          f"{r['ms_per_net_epoch']:.2f}",
                          f"{r['full_validations']:,} / {r['checks']:,}",
                          f"{r['ms_per_net_epoch'] / full_ms:.2f}")
    Console().print(table)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")


if __name__ == "__main__":
    main()
