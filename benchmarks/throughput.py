"""DS1 training throughput: mlds_jax's vmapped trainer against PyTorch baselines, one run.

    python benchmarks/throughput.py                 # everything, about 10 minutes on 2 cores
    python benchmarks/throughput.py --slots 1 64    # only these population sizes
    python benchmarks/throughput.py --no-torch      # skip the PyTorch baselines
    python benchmarks/throughput.py --config ds3 --slots 1 8 32 --epoch-sequences 64 \
        --no-torch                                  # DS3 (LSTM) shapes: `make bench-ds3`

What is timed, all on the release recipe's shapes (configs/ds1.toml: network, sequence
length, batch size; `--epoch-sequences` sequences per timed epoch):
  jax M=...   one compiled call of the population's training epoch (the step generation
              runs, minus validation), every net training; each M in a fresh process so
              peak memory (max RSS) is its own. Compile time is reported apart; the timed
              calls come after a warm-up and block until ready.
  torch-1     PyTorch, one net at a time, one single-threaded process per core (how the
              volunteer project used CPUs). Total over processes.
  torch-func  a torch.func ensemble (functional_call + vmap over 64 stacked nets, Adam on
              the stacked tensors), one single-threaded process per core. Total.
  matmul      the machine's fp32 matmul rate (jax, 2048^2), for the arithmetic ceiling.
  stream      the same step with recipe.train_data = "stream" (each net draws its epoch's
              sequences inside the step) at the same M, against the fixed set: the cost
              of streaming (`--data`).

Throughput is in sequence-steps per second: nets x sequences x time steps, forward and
backward, per second. Nets per hour at the release recipe divides it by the sequence-steps
one net needs: train_sequences x train_length x mean epochs per net (`--mean-epochs`, or
the mean over a learnability store given with `--store`, or `--learnability FILE`: the
release recipe's measured mean epochs per task, as `benchmarks/learnability-ds1.json`,
which `make bench` reads; else the cap). The projection uses the rate of the release
recipe's data mode.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import time

# One sequence-step forward and backward (issues 3 and 4): about 3x the forward FLOPs.
FLOPS_PER_SEQ_STEP = {"ds1": 24_100, "ds3": 808_000}
# The whole dataset the projection is for: DS1 500 nets per machine x 5 machines x 20 (the
# -10000 tiers of five datasets' worth, issue 3); DS3 100 nets per automaton x 100 automata.
DATASET_NETS = {"ds1": 50_000, "ds3": 10_000}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_cfg(config: str, epoch_sequences: int, recurrence: str = "auto",
              overrides: tuple[str, ...] = ()):
    from mlds_jax.config.load import load_config

    return load_config(config, [f"recipe.train_sequences={epoch_sequences}",
                                "recipe.check_every=1", "recipe.max_epochs=1000",
                                f"run.recurrence={recurrence}", *overrides])


def jax_one(config: str, slots: int, epoch_sequences: int, repeats: int,
            recurrence: str, overrides: tuple[str, ...] = ()) -> dict:
    """Time one population size in this process."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mlds_jax.generate import task_data
    from mlds_jax.train import population, step

    cfg = bench_cfg(config, epoch_sequences, recurrence, overrides)
    r = cfg.recipe
    data = task_data(cfg)
    pop = population.Population(cfg, data, slots)
    epoch = jax.jit(jax.vmap(lambda s, d: step._train_epoch(cfg, d, s), in_axes=(0, None)),
                    donate_argnums=0)
    ids = np.arange(slots, dtype=np.int32)  # nets 0..M-1, each with its task's values
    state = pop._empty(jnp.asarray(ids), step.net_arrays(cfg, ids))
    t0 = time.perf_counter()
    compiled = epoch.lower(state, pop.data).compile()
    compile_s = time.perf_counter() - t0
    state = jax.block_until_ready(compiled(state, pop.data))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state = jax.block_until_ready(compiled(state, pop.data))
        times.append(time.perf_counter() - t0)
    seq_steps = slots * r.train_sequences * r.train_length
    best = min(times)
    out = {"name": f"jax M={slots} {pop.recurrence}", "slots": slots, "compile_s": compile_s,
           "seconds": best, "seq_steps_per_s": seq_steps / best, "peak_mb": peak_rss_mb(),
           "device": str(jax.devices()[0].platform)}
    if out["device"] != "cpu":
        stats = jax.devices()[0].memory_stats() or {}
        out["peak_mb"] = stats.get("peak_bytes_in_use", 0) / 2**20
    return out


def torch_worker(kind: str, seconds: float, epoch_sequences: int, queue) -> None:
    """One single-threaded process: train for `seconds`, report sequence-steps done."""
    import torch

    from mlds_jax.research.torch_export import TorchNet
    from mlds_jax.train.data import make_task_data

    torch.set_num_threads(1)
    cfg = bench_cfg("ds1", epoch_sequences)
    r = cfg.recipe
    d = make_task_data(0, 2, train_sequences=r.train_sequences, train_length=r.train_length,
                       val_sequences=8, val_length=8, write_probability=r.write_probability)
    xs, ys = torch.tensor(d.train_inputs), torch.tensor(d.train_targets)
    net_cfg = cfg.network
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    if kind == "torch-1":
        net = TorchNet.from_config(net_cfg)
        opt = torch.optim.Adam(net.parameters(), lr=r.learning_rate)
        nets = 1

        def step(idx):
            opt.zero_grad()
            bce(net(xs[idx]), ys[idx]).backward()
            opt.step()
    else:
        from torch.func import functional_call, grad, stack_module_state

        nets = 64
        models = [TorchNet.from_config(net_cfg) for _ in range(nets)]
        params, buffers = stack_module_state(models)
        base = TorchNet.from_config(net_cfg).to("meta")
        opt = torch.optim.Adam(list(params.values()), lr=r.learning_rate)

        def loss(p, b, x, y):
            return bce(functional_call(base, (p, b), (x,)), y)

        vgrad = torch.vmap(grad(loss), in_dims=(0, 0, 0, 0))

        def step(idx):
            # Each net gets its own minibatch: (nets, B, T, I).
            bidx = idx[torch.randperm(len(idx))[: r.batch_size]].expand(nets, -1)
            grads = vgrad(params, buffers, xs[bidx], ys[bidx])
            for name, g in grads.items():
                params[name].grad = g
            opt.step()

    done, t0 = 0, time.perf_counter()
    warm = True
    while True:
        perm = torch.randperm(r.train_sequences).reshape(-1, r.batch_size)
        for idx in perm:
            step(idx)
            if warm:  # the first step pays one-off costs; start the clock after it
                warm, t0 = False, time.perf_counter()
                continue
            done += nets * r.batch_size * r.train_length
            if time.perf_counter() - t0 > seconds:
                queue.put((done, time.perf_counter() - t0, peak_rss_mb()))
                return


def torch_bench(kind: str, seconds: float, epoch_sequences: int) -> dict:
    cores = os.cpu_count() or 1
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=torch_worker, args=(kind, seconds, epoch_sequences, queue))
             for _ in range(cores)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    rate = sum(done / secs for done, secs, _ in results)
    return {"name": f"{kind} x{cores} procs", "seq_steps_per_s": rate, "compile_s": 0.0,
            "peak_mb": sum(mb for *_, mb in results)}


def matmul_gflops() -> float:
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    best = min(_timed(lambda: jax.block_until_ready(f(a))) for _ in range(5))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def mean_epochs(store: str | None, cap: int, learnability: str | None = None
                ) -> tuple[float, str]:
    if learnability:
        with open(learnability) as f:
            measured = json.load(f)
        per_task = measured["mean_epochs"]  # task -> mean epochs per net (tasks interleave)
        return (sum(per_task.values()) / len(per_task),
                f"{learnability}: {measured['source']}")
    if store:
        import numpy as np

        import mlds_jax

        ds = mlds_jax.open_dataset(store)
        status, epochs = np.asarray(ds.status[:]), np.asarray(ds.epochs[:])
        if (status > 0).any():
            return float(epochs[status > 0].mean()), f"mean over {store}"
    return float(cap), "the epoch cap (no learnability store given)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="ds1", choices=sorted(FLOPS_PER_SEQ_STEP),
                    help="dataset recipe whose shapes are timed (torch baselines: ds1 only)")
    ap.add_argument("--slots", type=int, nargs="+", default=[1, 64, 256, 1024])
    ap.add_argument("--epoch-sequences", type=int, default=256,
                    help="sequences per timed epoch (shapes are the release recipe's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--recurrence", nargs="+", default=["auto", "xla"],
                    choices=["auto", "xla", "cpu-kernel"],
                    help="GRU recurrence(s) to time (auto: the CPU kernel on CPU)")
    ap.add_argument("--torch-seconds", type=float, default=20.0)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--store", help="learnability store for mean epochs per net")
    ap.add_argument("--learnability", help="JSON of measured mean epochs per task (see above)")
    ap.add_argument("--data", nargs="+", default=["fixed", "stream"], choices=["fixed", "stream"],
                    help="training data modes to time (stream: the cpu-kernel/auto rows only)")
    ap.add_argument("--mean-epochs", type=float,
                    help="mean epochs per net for nets/h (default: from --store, else the cap)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the jax rows (ablations), e.g. network.num_layers=1")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child: one population size
    args = ap.parse_args()

    if args.one is not None:
        print(json.dumps(jax_one(args.config, args.one, args.epoch_sequences, args.repeats,
                                 args.recurrence[0], tuple(args.overrides))))
        return

    from rich.console import Console
    from rich.table import Table

    from mlds_jax.config.load import load_config
    from mlds_jax.config.sections import CURRICULUM_OFF

    release_cfg = load_config(args.config)
    release = release_cfg.recipe
    rows, seen = [], set()
    runs = [(rec, m, "fixed") for rec in args.recurrence for m in args.slots
            if "fixed" in args.data]
    runs += [(args.recurrence[0], m, "stream") for m in args.slots if "stream" in args.data]
    # Curricula and near misses need streamed data, and a fixed set has one trigger share
    # per dataset: the fixed-data rows time the recipe with them off (the step's shapes
    # are the same).
    off = {**CURRICULUM_OFF, "trigger_fraction": release.trigger_fraction}
    fixed_only = [f"recipe.{key}={value}" for key, value in off.items()]
    fixed_only += [f"recipe.task.{name}.{key}={off[key]}"
                   for name, values in release_cfg.task_recipes for key, _ in values if key in off]
    for recurrence, m, mode in runs:
        cmd = [sys.executable, __file__, "--config", args.config, "--one", str(m),
               "--epoch-sequences", str(args.epoch_sequences), "--repeats",
               str(args.repeats), "--recurrence", recurrence,
               *(f"--set={o}" for o in args.overrides),
               *(f"--set={o}" for o in (fixed_only if mode == "fixed" else ())),
               f'--set=recipe.train_data="{mode}"']
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:  # e.g. out of device memory: report it, time the rest
            print(f"  M={m} {recurrence} {mode}: failed: {done.stderr.strip()[-300:]}",
                  flush=True)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["data"] = mode
        if mode == "stream":
            row["name"] += " stream"
        if row["name"] in seen:  # "auto" resolved to one already timed
            continue
        seen.add(row["name"])
        rows.append(row)
        print(f"  {row['name']}: {row['seq_steps_per_s']:,.0f} seq-steps/s", flush=True)
    if not args.no_torch and args.config == "ds1":
        for kind in ("torch-1", "torch-func"):
            rows.append(torch_bench(kind, args.torch_seconds, args.epoch_sequences))
            print(f"  {rows[-1]['name']}: {rows[-1]['seq_steps_per_s']:,.0f} seq-steps/s",
                  flush=True)
    gflops = matmul_gflops()
    flops = FLOPS_PER_SEQ_STEP[args.config]
    ceiling = gflops * 1e9 / flops
    if args.mean_epochs:
        epochs, source = args.mean_epochs, "given"
    else:
        epochs, source = mean_epochs(args.store, release.max_epochs, args.learnability)
    per_net = release.train_sequences * release.train_length * epochs

    jax_rows = [r for r in rows if r["name"].startswith("jax")]
    best_jax = max([r for r in jax_rows if r.get("data") == release.train_data] or jax_rows,
                   key=lambda r: r["seq_steps_per_s"])
    by_name = {r["name"].split(" x")[0]: r for r in rows}
    table = Table(title=f"{args.config.upper()} training throughput ({os.cpu_count()} cores, "
                        f"{best_jax['device']}); nets/h at {epochs:.0f} epochs/net ({source})")
    for col in ("trainer", "seq-steps/s", "nets/h", "compile s", "peak MB",
                "x torch-1", "x torch-func", "% matmul ceiling"):
        table.add_column(col, justify="left" if col == "trainer" else "right")
    for r in rows:
        rate = r["seq_steps_per_s"]
        table.add_row(
            r["name"], f"{rate:,.0f}", f"{rate * 3600 / per_net:,.0f}", f"{r['compile_s']:.1f}",
            f"{r['peak_mb']:,.0f}",
            f"{rate / by_name['torch-1']['seq_steps_per_s']:.2f}" if "torch-1" in by_name else "-",
            f"{rate / by_name['torch-func']['seq_steps_per_s']:.2f}"
            if "torch-func" in by_name else "-",
            f"{100 * rate / ceiling:.1f}",
        )
    Console(width=140).print(table)
    print(f"matmul: {gflops:.0f} GFLOP/s fp32 -> ceiling {ceiling:,.0f} seq-steps/s "
          f"at {flops:,} FLOPs per seq-step")
    nets = DATASET_NETS[args.config]
    print(f"all {nets:,} {args.config.upper()} nets at the best rate ({best_jax['name']}, "
          f"{epochs:.0f} epochs x {release.train_sequences} sequences x "
          f"{release.train_length} steps per net, training epochs only): "
          f"{nets * per_net / best_jax['seq_steps_per_s'] / 3600:,.1f} h")
    for r in rows:
        fixed = by_name.get(r["name"].removesuffix(" stream"))
        if r.get("data") == "stream" and fixed:
            print(f"M={r['slots']}: stream / fixed = "
                  f"{r['seq_steps_per_s'] / fixed['seq_steps_per_s']:.2f}x "
                  f"(the cost of drawing every epoch's sequences inside the step)")
    kernel = [r for r in rows if r["name"].endswith("cpu-kernel")]
    xla = {r["slots"]: r for r in rows if r["name"].endswith(" xla")}
    for r in kernel:
        if r["slots"] in xla:
            print(f"M={r['slots']}: cpu-kernel / xla = "
                  f"{r['seq_steps_per_s'] / xla[r['slots']]['seq_steps_per_s']:.2f}x, "
                  f"cpu-kernel at {100 * r['seq_steps_per_s'] / ceiling:.1f}% of the ceiling")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "matmul_gflops": gflops, "mean_epochs": epochs}, f, indent=1)


if __name__ == "__main__":
    main()
