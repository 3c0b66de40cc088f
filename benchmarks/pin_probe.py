"""Where does a DS1 net carry each pin? Linear probes on every layer of stored nets.

For each net of a machine, on fresh random commands (a seed the dataset never used): the
net's bit accuracy per pin, then, per layer (each GRU layer's hidden state, each hidden
head layer after its activation), how well a logistic regression fitted on half of the
sequences predicts on the other half

- `reg`: the machine's output bit per pin (its register bit), and
- `event`: the input the pin's update needs on this step: strobe AND the pin's data bit
  (Parity: AND the byte's parity; the latches: AND data bit 0).

A pin the net has learned shows `reg` 1.00 from some layer on; `event` at its base rate
(0.75: a quarter of the steps write a 1 on a line) means the layer no longer carries that
input. This is how SimpleXOR's missing pins were traced (docs/recipe-ds1-ds2.md, round 4).

    python benchmarks/pin_probe.py out/ds1-demo.zarr --machine SimpleXORMachine --nets 3
"""

from __future__ import annotations

import argparse

import numpy as np

from fresh_traces import fresh_commands, machine_trace


def layer_states(net, xs) -> list[tuple[str, np.ndarray]]:
    """(name, (S, T, width) states) of every GRU layer and every hidden head layer of a
    `TorchNet`, each GRU layer run alone as a one-layer torch.nn.GRU on the stored weights."""
    import torch

    states, x = [], xs
    with torch.no_grad():
        for layer in range(net.rnn.num_layers):
            one = type(net.rnn)(x.shape[-1], net.rnn.hidden_size, 1, batch_first=True)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(one, f"{name}_l0").copy_(getattr(net.rnn, f"{name}_l{layer}"))
            x = one(x)[0]
            states.append((f"{net.rnn.mode.lower()}{layer + 1}", x.numpy()))
        hidden = 0
        for module in net.head:
            x = module(x)
            if not isinstance(module, torch.nn.Linear):
                hidden += 1
                states.append((f"head{hidden}", x.numpy()))
    return states


def probe_accuracy(states: np.ndarray, target: np.ndarray) -> float:
    """Held-out accuracy of a logistic regression from (S, T, W) states to (S, T) bits,
    fitted on the first half of the sequences, scored on the second (1.0 if constant)."""
    from sklearn.linear_model import LogisticRegression

    half = states.shape[0] // 2
    fit_x, test_x = (a.reshape(-1, states.shape[-1]) for a in (states[:half], states[half:]))
    fit_y, test_y = target[:half].reshape(-1), target[half:].reshape(-1)
    if fit_y.min() == fit_y.max():
        return 1.0
    return float(LogisticRegression(C=10.0, max_iter=2000).fit(fit_x, fit_y).score(test_x, test_y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("--machine", default="SimpleXORMachine")
    ap.add_argument("--nets", type=int, default=10, help="first N nets of the machine")
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    import torch

    import mlds_jax

    ds = mlds_jax.open_dataset(args.store)
    if args.machine not in ds.task_names:
        raise SystemExit(f"{args.store} has no {args.machine} (its machines: "
                         f"{', '.join(ds.task_names)})")
    strobe, data, xs = fresh_commands(args.sequences, args.length,
                                      ds.config["recipe"]["write_probability"], args.seed)
    target = machine_trace(args.machine, strobe, data)
    pins = list(range(8)) if args.machine in ("EightBitMachine", "SimpleXORMachine") else [0]
    if args.machine == "ParityMachine":
        data = np.concatenate([data.sum(-1, keepdims=True) % 2, data[..., 1:]], -1)
    event = strobe[..., None] * data  # (S, T, 8)
    ids = ds.select(f"task={args.machine}")[: args.nets]
    for n in ids:
        net = ds.to_torch(int(n))
        with torch.no_grad():
            right = ((net(xs).numpy() > 0) == (target > 0)).mean(axis=(0, 1))
        print(f"net {n}: pin accuracy " + " ".join(f"{right[p]:.2f}" for p in pins))
        for name, h in layer_states(net, xs):
            reg = " ".join(f"{probe_accuracy(h, target[..., p]):.2f}" for p in pins)
            ev = " ".join(f"{probe_accuracy(h, event[..., p]):.2f}" for p in pins)
            print(f"  {name:6s} reg {reg}   event {ev}")


if __name__ == "__main__":
    main()
