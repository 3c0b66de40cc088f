"""Recipe study: how many nets learn their machine, and how fast, per arm and machine.

An arm is a config plus overrides; each arm's nets train with `mlds generate` into their
own store under --out (resumable: rerun the same command to finish a killed study). A
config with a [sweep] puts several recipe points into one arm's population; each point is
reported as its own row. One factor at a time: every arm differs from the base config in
one thing.

    python benchmarks/recipe_study.py --out out/study-init --per-task 30 --cap 300 \\
        --set 'tasks=["SingleDirectMachine","SingleInvertMachine","EightBitMachine"]' \\
        --arm 'base:' --arm 'batch 32:recipe.batch_size=32' \\
        --sweep '[{}, {memory_gate_bias = 1.0}, {chrono_max = 32.0}]'

Per arm, point and machine: nets, share converged (the criterion of the config: the worst
pin's validation bit accuracy at the threshold), median and p90 epochs of the converged
nets, sequence-steps per converged net (all sequence-steps the arm's nets of that machine
trained, converged or not, over the number converged: what one learned net costs), and the
median of the criterion (the worst pin; DS2: the lower of clean and triggered); where the
recipe restarts nets, how many converged in their first start, second, ...
Prints a markdown table; --json writes the rows. DS3 (automata): one row per arm, point and
automaton size (states 16-23, 24-31, 32-39, 40-48), with the median validation symbol
accuracy and share of sequences entirely right, and the mean epochs trained per net.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np


def arm_rows(label: str, store_path: Path) -> list[dict]:
    """One row per (sweep point, task) of a finished arm store."""
    from mlds_jax.config.load import from_dict
    from mlds_jax.research.reader import open_dataset

    ds = open_dataset(store_path)
    cfg = from_dict(ds.config)
    meta = ds.metadata()
    r = cfg.recipe
    steps_per_epoch = r.train_sequences * r.train_length
    k, g = cfg.num_tasks, len(cfg.grid)
    point = (meta.index.to_numpy() // k) % g
    rows = []
    for p in range(g):
        changed = dict(cfg.sweep[p]) if cfg.sweep else {}
        name = label + (" " + ", ".join(f"{a}={v:g}" for a, v in changed.items())
                        if changed else "")
        for t, task in enumerate(cfg.task_names):
            m = meta[(point == p) & (meta["task"] == t) & (meta["status"] > 0)]
            conv = m[m["status"] == 1]
            epochs = conv["epochs"].to_numpy()
            spent = float(m["epochs"].sum()) * steps_per_epoch
            rows.append(dict(
                arm=name, task=task, nets=len(m), converged=len(conv),
                share=len(conv) / len(m) if len(m) else float("nan"),
                median_epochs=float(np.median(epochs)) if len(epochs) else float("nan"),
                p90_epochs=float(np.percentile(epochs, 90)) if len(epochs) else float("nan"),
                seq_steps_per_converged=spent / len(conv) if len(conv) else float("inf"),
                seq_steps=spent,
                worst_pin=float(m[list(cfg.criterion_names)].min(axis=1).median())
                if len(m) else float("nan"),
                # converged nets by the start they converged in (recipe.restart_epochs)
                by_start=np.bincount(conv["restarts"].to_numpy().astype(int)).tolist()
                if "restarts" in meta else None,
            ))
    return rows


def size_rows(label: str, store_path: Path) -> list[dict]:
    """DS3: one row per (sweep point, automaton-size bin) of a finished arm store (only the
    nets that finished count; the `nets` column says how many)."""
    from mlds_jax.config.load import from_dict
    from mlds_jax.research.reader import STATE_BINS, open_dataset

    ds = open_dataset(store_path)
    cfg = from_dict(ds.config)
    meta = ds.metadata()
    states = np.array([a.n_states for a in ds.automata()])[meta["task"].to_numpy()]
    k, g = cfg.num_tasks, len(cfg.grid)
    point = (meta.index.to_numpy() // k) % g
    rows = []
    for p in range(g):
        changed = dict(cfg.sweep[p]) if cfg.sweep else {}
        name = label + (" " + ", ".join(f"{a}={v:g}" for a, v in changed.items())
                        if changed else "")
        for lo, hi in STATE_BINS:
            m = meta[(point == p) & (states >= lo) & (states <= hi) & (meta["status"] > 0)]
            conv = m[m["status"] == 1]
            epochs = conv["epochs"].to_numpy()
            pct = (lambda q: float(np.percentile(epochs, q)) if len(epochs) else float("nan"))
            rows.append(dict(
                arm=name, states=f"{lo}-{hi}", nets=len(m), converged=len(conv),
                automata=int(m["task"].nunique()),
                median_epochs=pct(50), p90_epochs=pct(90),
                max_epochs=float(epochs.max()) if len(epochs) else float("nan"),
                symbol_accuracy=float(m["val_symbol_accuracy"].median()) if len(m) else float("nan"),
                sequences_right=float(m["val_sequences_right"].median()) if len(m) else float("nan"),
                mean_epochs=float(m["epochs"].mean()) if len(m) else float("nan"),
            ))
    return rows


def size_markdown(rows: list[dict]) -> str:
    def num(x, fmt):
        return "-" if not np.isfinite(x) else format(x, fmt)

    out = ["| arm | states | automata | converged | median epochs | p90 | slowest | "
           "median val symbol acc | median sequences right | mean epochs trained |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share = 100 * r["converged"] / r["nets"] if r["nets"] else float("nan")
        out.append(f"| {r['arm']} | {r['states']} | {r['automata']} | {r['converged']}/{r['nets']} "
                   f"({num(share, '.0f')}%) | {num(r['median_epochs'], '.0f')} | "
                   f"{num(r['p90_epochs'], '.0f')} | {num(r['max_epochs'], '.0f')} | "
                   f"{num(r['symbol_accuracy'], '.3f')} | {num(r['sequences_right'], '.3f')} | "
                   f"{num(r['mean_epochs'], '.0f')} |")
    return "\n".join(out)


def markdown(rows: list[dict]) -> str:
    def num(x, fmt):
        return "-" if not np.isfinite(x) else format(x, fmt)

    starts = any(r.get("by_start") is not None for r in rows)
    out = ["| arm | machine | converged | median epochs | p90 epochs | M seq-steps per "
           "converged net | median worst-pin acc |" + (" converged in start 1, 2, ... |"
                                                       if starts else ""),
           "|---|---|---|---|---|---|---|" + ("---|" if starts else "")]
    for r in rows:
        out.append(f"| {r['arm']} | {r['task'].removesuffix('Machine')} | "
                   f"{r['converged']}/{r['nets']} ({num(100 * r['share'], '.0f')}%) | "
                   f"{num(r['median_epochs'], '.0f')} | {num(r['p90_epochs'], '.0f')} | "
                   f"{num(r['seq_steps_per_converged'] / 1e6, '.2f')} | "
                   f"{num(r['worst_pin'], '.4f')} |"
                   + (f" {', '.join(map(str, r.get('by_start') or [0]))} |" if starts else ""))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="ds1", help="base config (name or TOML path)")
    ap.add_argument("--out", required=True, help="directory for the arms' stores")
    ap.add_argument("--per-task", type=int, required=True,
                    help="nets per task per arm (a multiple of the sweep's points)")
    ap.add_argument("--cap", type=int, help="epoch cap of every net (recipe.max_epochs and "
                    "the [recipe.task.NAME] tables' max_epochs)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="override for every arm (repeatable)")
    ap.add_argument("--arm", action="append", default=[],
                    help="LABEL:KEY=VALUE[;KEY=VALUE...] (repeatable; 'base:' for none)")
    ap.add_argument("--sweep", help="TOML array of inline tables: the sweep points of every arm")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--dry-run", action="store_true",
                    help="build and check every arm's config, train nothing (the README tests)")
    args = ap.parse_args()

    from mlds_jax.config.load import load_config
    from mlds_jax.generate import generate

    common = list(args.overrides)
    if args.cap:  # every net's cap, the per-task tables' too (an arm may still set its own)
        common.append(f"recipe.max_epochs={args.cap}")
        common += [f"recipe.task.{name}.max_epochs={args.cap}" for name, values
                   in load_config(args.config, args.overrides).task_recipes
                   if "max_epochs" in dict(values)]
    if args.sweep:
        common.append(f"sweep={args.sweep}")
    rows = []
    for spec in args.arm or ["base:"]:
        label, _, sets = spec.partition(":")
        extra = [s for s in sets.split(";") if s.strip()]
        cfg = load_config(args.config, common + extra)
        path = Path(args.out) / (re.sub(r"[^A-Za-z0-9.=-]+", "_", label).strip("_") + ".zarr")
        if args.dry_run:
            print(f"{label}: {cfg.num_tasks * args.per_task} nets, {len(cfg.grid)} sweep "
                  f"points, cap {cfg.max_cap} -> {path}")
            continue
        t0 = time.perf_counter()
        last = [t0]

        def progress(running: int, max_epoch: int) -> None:  # a line a minute on stderr
            if time.perf_counter() - last[0] > 60:
                last[0] = time.perf_counter()
                print(f"{label}: {running} nets training, up to epoch {max_epoch} "
                      f"({last[0] - t0:.0f} s)", file=sys.stderr, flush=True)

        report = generate(cfg, path.absolute(), args.per_task, on_step=progress)
        print(f"{label}: {report.trained} nets trained in {time.perf_counter() - t0:.0f} s "
              f"({report.already_stored} already stored) -> {path}", file=sys.stderr, flush=True)
        rows += size_rows(label, path) if cfg.automata is not None else arm_rows(label, path)
    if args.dry_run:
        return
    print(size_markdown(rows) if "states" in (rows[0] if rows else {}) else markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
