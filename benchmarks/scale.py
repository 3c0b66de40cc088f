"""Scaling out, measured: the same DS1 tier by plain `mlds generate`, by `--engine ray` with
one worker holding every core and with two workers holding half each (equal cores), and
plain again with a checkpoint after every step; each in a fresh process, in one run.

    python benchmarks/scale.py                  # 320 nets x 40 epochs
    python benchmarks/scale.py --per-task 64 --epochs 40

The tier is made of the two machines no net learns (SimpleXOR, Parity: see tiers.py), so
every net trains exactly --epochs epochs and runs compare directly. Reported per run: wall
seconds (process start to exit: Ray's start-up included), nets per hour, the ratio to the
plain run, and for the checkpointed run the seconds per checkpoint and their share of the
run. Needs the [ray] extra for the Ray rows.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time


def run(out: str, per_task: int, epochs: int, extra: list[str]) -> dict:
    args = [sys.executable, "-m", "mlds_jax.cli", "generate", "ds1", "--out", out,
            "--per-task", str(per_task), "--no-progress",
            "--set", f"recipe.max_epochs={epochs}",
            "--set", 'tasks=["SimpleXORMachine", "ParityMachine"]', *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr}")
    nets = 2 * per_task
    return {"wall": wall, "nets_per_hour": nets / wall * 3600, "stdout": proc.stdout,
            "stderr": proc.stderr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-task", type=int, default=160, help="nets per machine (2 machines)")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    variants = [
        ("plain generate", []),
        ("ray, 1 worker x all cores", ["--engine", "ray", "--workers", "1",
                                       "--worker-cpus", str(cores)]),
        ("ray, 2 workers x half the cores", ["--engine", "ray", "--workers", "2",
                                             "--worker-cpus", str(cores / 2)]),
        ("plain, checkpoint every step", ["--set", "run.checkpoint_minutes=1e-6"]),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(variants):
            r = run(f"{tmp}/s{i}.zarr", args.per_task, args.epochs, extra)
            rows.append((name, r))
            print(f"{name}: {r['wall']:.1f} s, {r['nets_per_hour']:,.0f} nets/h", flush=True)
    base = rows[0][1]["wall"]
    print(f"\n{2 * args.per_task} DS1 nets x {args.epochs} epochs, {cores} cores\n")
    print("| run | wall s | nets/h | time vs plain |")
    print("|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['wall']:.1f} | {r['nets_per_hour']:,.0f} | "
              f"{r['wall'] / base:.3f} |")
    ckpt = rows[-1][1]
    found = re.search(r"(\d+) checkpoints in ([\d.]+) s", ckpt["stdout"] + ckpt["stderr"])
    if found:
        n, secs = int(found.group(1)), float(found.group(2))
        print(f"\ncheckpoints: {n} in {secs:.1f} s, {secs / max(n, 1) * 1000:.0f} ms each, "
              f"{secs / ckpt['wall']:.1%} of the run")


if __name__ == "__main__":
    main()
