"""Compile time and training rate of the population step at XLA CPU optimisation levels.

Each (config, level) runs in its own process (XLA reads XLA_FLAGS once), in alternation,
with the persistent compilation cache off: the first step of a fresh population (compile
and 5 epochs of 16 nets) and then 10 more steps (50 epochs), per net-epoch.

    python benchmarks/compile_time.py --configs ds1 ds3 --levels -1 2 1 --repeats 3

Level -1 is no flag (XLA's default); the `mlds` command compiles at level 1
(`mlds_jax/train/compile_cache.py`). Sequence configs (DS1-DS3); DS4's step trains whole
30-epoch runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SLOTS = 16
STEPS = 10

CHILD = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_compilation_cache", False)
from mlds_jax.config.load import load_config
from mlds_jax.generate import task_data
from mlds_jax.train import population, step
name, slots, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# no net may stop within the measured steps: every cap (the config's and its tasks') raised
caps = [f"recipe.task.{task}.max_epochs=100000" for task, values in load_config(name).task_recipes
        if any(k == "max_epochs" for k, _ in values)]
cfg = load_config(name, ["recipe.max_epochs=100000", *caps])
pop = population.Population(cfg, task_data(cfg), slots)
state = pop._empty_state(slots)
ids = np.arange(slots, dtype=np.int32)
none = np.full(slots, -1, np.int32)
t0 = time.perf_counter()
state = pop._step(state, jnp.asarray(ids), step.net_arrays(cfg, ids), pop.data)
jax.block_until_ready(state.params)
t1 = time.perf_counter()
for _ in range(steps):
    state = pop._step(state, jnp.asarray(none), step.net_arrays(cfg, none), pop.data)
jax.block_until_ready(state.params)
t2 = time.perf_counter()
epochs = steps * cfg.recipe.check_every
print(json.dumps(dict(first_step_s=t1 - t0, ms_per_net_epoch=(t2 - t1) / epochs / slots * 1e3)))
"""


def measure(config: str, level: int) -> dict:
    flags = "" if level < 0 else f"--xla_backend_optimization_level={level}"
    env = dict(os.environ, XLA_FLAGS=flags, MLDS_JAX_COMPILE_CACHE="0")
    done = subprocess.run([sys.executable, "-c", CHILD, config, str(SLOTS), str(STEPS)],
                          env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{config} at level {level} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=["ds1", "ds3"])
    ap.add_argument("--levels", nargs="+", type=int, default=[-1, 1],
                    help="XLA CPU optimisation levels; -1: no flag, XLA's default")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    rows = {}
    for _ in range(args.repeats):
        for config in args.configs:
            for level in args.levels:
                m = measure(config, level)
                rows.setdefault((config, level), []).append(m)
                print(f"{config} level {level}: first step {m['first_step_s']:.1f} s, "
                      f"{m['ms_per_net_epoch']:.2f} ms per net-epoch", flush=True)
    print("\n| config | level | first step (compile + 5 epochs), s | ms per net-epoch |")
    print("|---|---|---|---|")
    for (config, level), ms in rows.items():
        first = " / ".join(f"{m['first_step_s']:.1f}" for m in ms)
        rate = " / ".join(f"{m['ms_per_net_epoch']:.2f}" for m in ms)
        print(f"| {config} | {level} | {first} | {rate} |")


if __name__ == "__main__":
    main()
