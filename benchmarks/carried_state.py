"""Parity with the hidden state carried from epoch to epoch (truncated backpropagation
through a continuing stream): a study outside the trainer, in XLA.

The release recipe's Parity nets hold parity for about the 16 steps they train on and drift
beyond (docs/recipe-ds1-ds2.md, rounds 4-6). Here each of the epoch's 512 training
sequences continues where the same slot's sequence of the previous epoch ended: the nets
start from the hidden state they ended in, and the targets from the register's value
(Parity is linear: the register from a start value p0 is p0 xor the register from 0).
Each slot starts again from the machine's start state (and a zero hidden state) with
chance `--q` per epoch, so episodes last 16 / q steps on average, and the gradient still
spans only 16 steps. The epoch's data are the trainer's stream (`stream.machine_epoch`, the
same keys), the nets the trainer's init of DS1 Parity nets (`step.init_net`), the optimiser
the trainer's Adam schedule; validation is 256 fresh 128-step sequences from the start
state, the worst pin being Parity's pin 0.

    python benchmarks/carried_state.py --nets 20 --cap 1000 --q 0.25
    python benchmarks/carried_state.py --init-from out/s19v/base.zarr --nets 20 --cap 1000 \\
        --control --lr 3e-3

`--init-from STORE` starts from the stored final weights of the store's first `--nets`
Parity nets (fresh Adam at a constant `--lr`, the full task); `--control` trains a copy of
every net with a fresh start every epoch (q = 1: the trainer's own data) beside them.
`--noise S [S ...]` trains one copy of the nets per value with Gaussian noise of that size
added to every layer's hidden state at every training step (never in validation); each
report line also gives the median share of flips after the eighth of a validation sequence
that a net misses (a counter runs out there, a flip-flop does not: fresh_traces.py --flips).

    python benchmarks/carried_state.py --init-from out/s19rel/base.zarr --nets 20 --cap 600 \\
        --every 50 --q 1 --noise 0.02 0.05 --control
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from fresh_traces import flip_breakdown, pooled

TASK = "ParityMachine"
NOISE_KEY = 1 << 20  # folded into a net's order key, + epoch: its hidden-state noise


def _late_flips_wrong(breakdown: dict) -> float:
    """The share of flips with 8 or more before them that a net misses, pooled over
    `fresh_traces.flip_breakdown`'s bins from 8 on (nan where it met none)."""
    return pooled([{"late": breakdown[k]} for k in ("flip 8-11", "flip 12+")], "late")[0]


def forward(net, layout, flat, xs, h0, noise=None):
    """One DS1 net (GRU stack + tanh head): xs (B, T, I) from hidden state h0 (B, L, H) ->
    logits (B, T, O) and the last hidden state (B, L, H). `noise` (L, T, H, B), if given,
    is added to each layer's new hidden state at every step (the next step and the layer
    above see the noisy state)."""
    from mlds_jax.train import models

    p = models.unflatten_params(flat, layout)
    y = jnp.transpose(xs, (2, 1, 0))  # (I, T, B)
    last = []
    for layer in range(net.num_layers):
        rnn = p["rnn"]
        w_hh, b_hh = rnn[f"weight_hh_l{layer}"], rnn[f"bias_hh_l{layer}"]
        xi = (jnp.einsum("gi,itb->tgb", rnn[f"weight_ih_l{layer}"], y)
              + rnn[f"bias_ih_l{layer}"][None, :, None])

        def cell(h, x, w_hh=w_hh, b_hh=b_hh):
            xi_t, eps = x
            h = models.gru_cell(w_hh, b_hh, h, xi_t) + eps
            return h, h

        eps = jnp.zeros((xi.shape[0], net.hidden_size, xi.shape[2])) if noise is None else noise[layer]
        h_last, hs = jax.lax.scan(cell, h0[:, layer].T, (xi, eps))
        last.append(h_last.T)
        y = jnp.moveaxis(hs, 0, 1)  # (H, T, B)
    widths = (net.hidden_size, *net.head_sizes, net.output_size)
    for i in range(len(widths) - 1):
        head = p[f"head_{i}"]
        y = jnp.tensordot(head["weight"], y, axes=(1, 0)) + head["bias"][:, None, None]
        if i < len(widths) - 2:
            y = jnp.tanh(y)
    return jnp.transpose(y, (2, 1, 0)), jnp.stack(last, 1)


def continue_targets(ys, p0):
    """Parity targets (S, T, O) of sequences run from register 0, as from register p0 (S,)
    (pin 0 xor p0; ungraded steps, -1, stay); and each sequence's last register (S,)."""
    pin0 = jnp.where(ys[..., 0] >= 0, jnp.abs(ys[..., 0] - p0[:, None]), ys[..., 0])
    ys = ys.at[..., 0].set(pin0)
    return ys, ys[:, -1, 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", type=int, default=20, help="Parity nets (net ids 4, 9, ...)")
    ap.add_argument("--cap", type=int, default=1000, help="epochs")
    ap.add_argument("--q", type=float, default=0.25, help="chance a slot starts again, per epoch")
    ap.add_argument("--seed", type=int, default=1, help="dataset seed (out/s19v: 1)")
    ap.add_argument("--every", type=int, default=100, help="epochs between validations")
    ap.add_argument("--init-from", help="a DS1 store: start from its Parity nets' weights")
    ap.add_argument("--lr", type=float, default=3e-3, help="with --init-from: constant Adam rate")
    ap.add_argument("--length", type=int,
                    help="training sequence length (default the release recipe's; validation "
                         "stays 128 steps)")
    ap.add_argument("--control", action="store_true", help="also every net at q = 1")
    ap.add_argument("--noise", type=float, nargs="+",
                    help="Gaussian noise of this size added to every hidden state at every "
                         "training step (one arm per value)")
    args = ap.parse_args()
    if not 0 < args.q <= 1 or args.cap % args.every:
        ap.error("--q must be in (0, 1] and --cap a multiple of --every")

    from mlds_jax.config.load import load_config
    from mlds_jax.train import models, step, stream

    cfg = load_config("ds1", [f"seed={args.seed}"]
                      + ([f"recipe.train_length={args.length}"] if args.length else []))
    net, r = cfg.network, cfg.recipe
    layout = models.param_layout(net)
    S, T, B = r.train_sequences, r.train_length, r.batch_size
    L, H = net.num_layers, net.hidden_size
    ids = np.arange(args.nets) * cfg.num_tasks + cfg.tasks.index(TASK)
    machine = stream.MACHINES.index(TASK)

    def loss_fn(flat, xs, ys, h0, noise):  # the trainer's loss (ungraded steps add 0)
        logits, last = forward(net, layout, flat, xs, h0, noise)
        return models.mean_loss("bce", logits, ys), last

    def one_epoch(st, carry_h, carry_p, q, sigma, e):
        key = stream.epoch_key(cfg.seed, st.task, e)
        cur = stream.Curriculum.from_hyper(st.hyper)
        xs, ys = stream.machine_epoch(key, machine, S, T, r.write_probability, 0.0, cur,
                                      cur.scheduled(e))
        again = jax.random.uniform(jax.random.fold_in(key, 987), (S,)) < q
        h0 = jnp.where(again[:, None, None], 0.0, carry_h)
        ys, p_last = continue_targets(ys, jnp.where(again, 0.0, carry_p))
        opt = step._optimizer(cfg, st.hyper)
        order = jax.random.permutation(jax.random.fold_in(st.order_key, e), S).reshape(-1, B)

        def minibatch(c, batch):
            params, opt_state, h_new = c
            idx, k = batch
            noise = sigma * jax.random.normal(
                jax.random.fold_in(jax.random.fold_in(st.order_key, NOISE_KEY + e), k), (L, T, H, B))
            (loss, last), g = jax.value_and_grad(loss_fn, has_aux=True)(
                params, xs[idx], ys[idx], h0[idx], noise)
            updates, opt_state = opt.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, h_new.at[idx].set(last)), loss

        (params, opt_state, h_new), losses = jax.lax.scan(
            minibatch, (st.params, st.opt_state, h0), (order, jnp.arange(len(order))))
        return st.replace(params=params, opt_state=opt_state), h_new, p_last, losses.mean()

    @jax.jit
    def epochs(st, carry_h, carry_p, qs, sigmas, e0):
        def body(c, e):
            *c, loss = jax.vmap(one_epoch, in_axes=(0, 0, 0, 0, 0, None))(*c, qs, sigmas, e)
            return tuple(c), loss
        (st, carry_h, carry_p), loss = jax.lax.scan(
            body, (st, carry_h, carry_p), e0 + jnp.arange(args.every))
        return st, carry_h, carry_p, loss[-1]

    rng = np.random.default_rng(4242)  # fresh validation commands, the full task
    strobe = (rng.random((256, 128)) < r.write_probability).astype(np.float32)
    data = rng.integers(0, 2, (256, 128, 8)).astype(np.float32)
    want = np.cumsum((strobe == 1) & (data.sum(-1) % 2 == 1), axis=1) % 2
    vx = jnp.asarray(np.concatenate([strobe[..., None], data], -1))

    @jax.jit
    def validate(params):
        def one(flat):
            logits, _ = forward(net, layout, flat, vx, jnp.zeros((256, L, H)))
            return (logits[..., 0] > 0) == (jnp.asarray(want) > 0.5)
        return jax.vmap(one)(params)

    st = jax.vmap(lambda n: step.init_net(cfg, n))(jnp.asarray(ids, jnp.int32))
    if args.init_from:
        import mlds_jax

        ds = mlds_jax.open_dataset(args.init_from)
        if any(ds.task_names[int(ds.task[n])] != TASK for n in ids):
            raise SystemExit(f"{args.init_from}: nets {ids.tolist()} are not all {TASK} nets")
        hyper = dict(st.hyper, learning_rate=jnp.full((len(ids),), args.lr),
                     decay_half_life=jnp.zeros(len(ids)), curriculum_epochs=jnp.zeros(len(ids)))
        flat = jnp.asarray(np.asarray(ds.weights[ids]), jnp.float32)
        st = st.replace(params=flat, hyper=hyper, opt_state=jax.vmap(
            lambda f, h: step._optimizer(cfg, h).init(f))(flat, hyper))
    # Arms: q with each --noise (0 unless given), then the control (q = 1, no noise).
    noises = args.noise or [0.0]
    arms, qs, sigmas = [], [], []
    for sigma in noises:
        arms.append((f"q = {args.q}" + (f", noise {sigma}" if sigma else ""),
                     slice(len(qs), len(qs) + len(ids))))
        qs += [args.q] * len(ids)
        sigmas += [sigma] * len(ids)
    if args.control:
        arms.append(("q = 1 (control)", slice(len(qs), len(qs) + len(ids))))
        qs += [1.0] * len(ids)
        sigmas += [0.0] * len(ids)
    copies = len(qs) // len(ids)
    st = jax.tree.map(lambda x: jnp.concatenate([x] * copies), st)
    qs, sigmas = jnp.asarray(qs), jnp.asarray(sigmas)
    carry_h = jnp.zeros((len(qs), S, L, H))
    carry_p = jnp.zeros((len(qs), S))
    t0, first = time.time(), {}
    for e0 in range(0, args.cap, args.every):
        st, carry_h, carry_p, loss = epochs(st, carry_h, carry_p, qs, sigmas, e0)
        right, loss = np.asarray(validate(st.params)), np.asarray(loss)
        acc = right.mean(axis=(1, 2))
        late_wrong = np.array([_late_flips_wrong(flip_breakdown(strobe, data, r)) for r in right])
        for name, part in arms:
            a = acc[part]
            for i in np.flatnonzero(a >= cfg.recipe.threshold):
                first.setdefault((name, int(ids[i])), e0 + args.every)
            print(f"epoch {e0 + args.every:5d} {time.time() - t0:6.0f} s  {name:16s} "
                  f"train loss median {np.median(loss[part]):.4f}  128-step accuracy median "
                  f"{np.median(a):.3f} best {a.max():.4f}  flips after 8 wrong median "
                  f"{np.nanmedian(late_wrong[part]):.3f}  at the threshold "
                  f"{int((a >= cfg.recipe.threshold).sum())}"
                  f"/{len(a)} (ever {sum(1 for k in first if k[0] == name)})", flush=True)


if __name__ == "__main__":
    main()
