"""DS4 training throughput: the vmapped trainer against PyTorch on the same CNNs, one run.

    python benchmarks/ds4_throughput.py            # `make bench-ds4`, about 2 minutes on 2 cores
    python benchmarks/ds4_throughput.py --slots 16 64 --torch-nets 64

What is timed (configs/ds4-trojan.toml: the 4,970-param CNN, batch 32, 1,440 training
images, the net's poisoned rows triggered inside the step):
  jax M=...   one compiled call of `step._train_epoch` vmapped over M nets (a whole epoch,
              45 minibatches, every net training); compile reported apart, the timed calls
              after a warm-up, blocked until ready.
  torch-func  a torch.func ensemble of the same CNNs (functional_call + vmap over
              --torch-nets stacked nets, grad, Adam on the stacked tensors), clean data.
  torch-1     plain PyTorch, one net at a time (torch.optim.Adam), clean data.
  matmul      the machine's fp32 matmul rate (jax, 2048^2), for the arithmetic ceiling.
PyTorch runs in this process with torch's default thread count (every core).

Throughput is in image-steps per second: nets x images, forward and backward. One
image-step is FLOPS_PER_IMAGE_STEP (3 x the forward's 2 x 55,456 multiply-adds). Nets per
hour divide it by one net's image-steps at the recipe: 1,440 images x max_epochs.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from mlds_jax.config.load import load_config
from mlds_jax.train import population, step, vision

FLOPS_PER_IMAGE_STEP = 3 * 2 * 55_456
PROJECTION_NETS = 10_000


def jax_rate(cfg, m: int, repeats: int) -> tuple[float, float]:
    """(image-steps/s, compile seconds) of one epoch of M nets."""
    data = vision.ImageData.from_split(vision.split_of(cfg.seed))
    ids = np.arange(m, dtype=np.int32)
    arrays = step.net_arrays(cfg, ids)
    state = jax.jit(jax.vmap(lambda n, a: step.init_net(cfg, n, a)))(jnp.asarray(ids), arrays)
    epoch = jax.jit(jax.vmap(lambda s, d: step._train_epoch(cfg, d, s), in_axes=(0, None)))
    t = time.perf_counter()
    state = jax.block_until_ready(epoch(state, data))
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(repeats):
        state = epoch(state, data)
    jax.block_until_ready(state)
    return m * cfg.recipe.train_sequences * repeats / (time.perf_counter() - t), compile_s


def torch_rates(cfg, n_nets: int, seconds: float) -> dict[str, float]:
    import torch
    from torch.func import functional_call, grad, stack_module_state

    from mlds_jax.research.torch_export import TorchConvNet

    split = vision.split_of(cfg.seed)
    x = torch.from_numpy(split.train_images)
    y = torch.from_numpy(split.train_labels.astype(np.int64))
    b, lr = cfg.recipe.batch_size, cfg.recipe.learning_rate
    batches = [(x[i:i + b], y[i:i + b]) for i in range(0, len(y), b)]
    out = {}

    nets = [TorchConvNet.from_config(cfg.network) for _ in range(n_nets)]
    params, buffers = stack_module_state(nets)
    base = TorchConvNet.from_config(cfg.network).to("meta")

    def loss(p, bufs, xb, yb):
        return torch.nn.functional.cross_entropy(functional_call(base, (p, bufs), (xb,)), yb)

    vgrad = torch.vmap(grad(loss), in_dims=(0, 0, None, None))
    m = {k: torch.zeros_like(v) for k, v in params.items()}
    v2 = {k: torch.zeros_like(v) for k, v in params.items()}
    steps, images, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for xb, yb in batches:
            g = vgrad(params, buffers, xb, yb)
            steps += 1
            with torch.no_grad():
                for k in params:  # Adam, bias-corrected, on the stacked tensors
                    m[k].mul_(0.9).add_(g[k], alpha=0.1)
                    v2[k].mul_(0.999).addcmul_(g[k], g[k], value=0.001)
                    mh, vh = m[k] / (1 - 0.9 ** steps), v2[k] / (1 - 0.999 ** steps)
                    params[k].sub_(lr * mh / (vh.sqrt() + 1e-8))
            images += n_nets * len(yb)
    out["torch-func"] = images / (time.perf_counter() - t0)

    net = TorchConvNet.from_config(cfg.network)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    images, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for xb, yb in batches:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xb), yb).backward()
            opt.step()
            images += len(yb)
    out["torch-1"] = images / (time.perf_counter() - t0)
    return out


def matmul_gflops() -> float:
    a = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    t = time.perf_counter()
    for _ in range(5):
        r = f(a)
    jax.block_until_ready(r)
    return 5 * 2 * 2048 ** 3 / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slots", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--torch-nets", type=int, default=64)
    ap.add_argument("--torch-seconds", type=float, default=15.0)
    args = ap.parse_args()
    cfg = load_config("ds4-trojan")
    per_net = cfg.recipe.train_sequences * cfg.recipe.max_epochs
    rates = {}
    for m in args.slots:
        rate, compile_s = jax_rate(cfg, m, args.repeats)
        rates[f"jax M={m}"] = rate
        print(f"  jax M={m}: {rate:,.0f} image-steps/s (compile {compile_s:.1f} s)", flush=True)
    for name, rate in torch_rates(cfg, args.torch_nets, args.torch_seconds).items():
        rates[name] = rate
        print(f"  {name}: {rate:,.0f} image-steps/s", flush=True)
    gflops = matmul_gflops()
    ceiling = gflops * 1e9 / FLOPS_PER_IMAGE_STEP
    print(f"matmul: {gflops:.0f} GFLOP/s fp32 -> ceiling {ceiling:,.0f} image-steps/s")
    for name, rate in rates.items():
        nets_h = rate * 3600 / per_net
        print(f"{name}: {rate:,.0f} image-steps/s, {100 * rate / ceiling:.1f}% of the matmul "
              f"ceiling, {nets_h:,.0f} nets/h, {PROJECTION_NETS:,} nets in "
              f"{PROJECTION_NETS / nets_h:.1f} h")
    best = max((r for n, r in rates.items() if n.startswith("jax")))
    print(f"best jax / torch-func = {best / rates['torch-func']:.2f}x, "
          f"/ torch-1 = {best / rates['torch-1']:.2f}x")


if __name__ == "__main__":
    main()
