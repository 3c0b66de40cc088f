"""Do the DS3 nets a store calls converged mimic their automaton on sequences they never saw?

The DS3 twin of `fresh_traces.py`, independent of the generator's code path: each net is
built here from plain ``torch.nn.LSTM`` + ``torch.nn.Linear`` layers, its tensors copied in
through the stored layout (``attrs["layout"]``: torch key, shape, offset in the flat row);
the automata come from the store's tables (``tables/automaton_*``), replayed here in NumPy
on fresh uniform input symbols (a seed the dataset never used). Per net: the symbol
accuracy, and the share of sequences entirely right.

    python benchmarks/ds3_replay.py out/ds3.zarr                    # converged nets, 4x length
    python benchmarks/ds3_replay.py out/ds3.zarr --nets all --sequences 256 --length 128
    python benchmarks/ds3_replay.py out/ds3.zarr --nets all --by-step   # how far back nets track

The sequences are 4x the training length unless `--length` says otherwise; the tally per
automaton-size bin at the end gives the share of nets at or above `--threshold`.
"""

from __future__ import annotations

import argparse

import numpy as np

N_INPUTS, N_OUTPUTS = 39, 14  # SPEC: input and output alphabets of every DS3 automaton


def replay(transitions: np.ndarray, outputs: np.ndarray, start: int,
           symbols: np.ndarray) -> np.ndarray:
    """(S, T) input symbols -> (S, T) output symbols of the Mealy machine from `start`."""
    state = np.full(symbols.shape[0], start)
    out = np.empty_like(symbols)
    for t in range(symbols.shape[1]):
        out[:, t] = outputs[state, symbols[:, t]]
        state = transitions[state, symbols[:, t]]
    return out


def torch_lstm_net(network: dict, layout: list[dict], row: np.ndarray):
    """The stored row as torch modules: (B, T, 39) -> (B, T, 14) logits."""
    import torch
    from torch import nn

    lstm = nn.LSTM(network["input_size"], network["hidden_size"], network["num_layers"],
                   batch_first=True)
    widths = [network["hidden_size"], *network["head_sizes"], network["output_size"]]
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}[network["activation"]]
    layers = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(fan_in, fan_out), act()]
    head = nn.Sequential(*layers[:-1])
    state = {}
    for spec in layout:
        size = int(np.prod(spec["shape"]))
        flat = row[spec["offset"]: spec["offset"] + size]
        state[spec["torch_key"]] = torch.tensor(flat.reshape(spec["shape"]))
    lstm.load_state_dict({k[len("rnn."):]: v for k, v in state.items() if k.startswith("rnn.")})
    head.load_state_dict({k[len("head."):]: v for k, v in state.items()
                          if k.startswith("head.")})
    assert sum(v.numel() for v in state.values()) == row.size, "layout does not cover the row"

    def forward(x):
        return head(lstm(x)[0])

    return forward


def replay_scores(ds, ids, sequences: int, length: int, seed: int,
                  alphabet: int = N_INPUTS) -> list[dict]:
    import torch

    if ds.config["network"]["cell"] != "lstm":
        raise SystemExit(f"{ds.path}: not a DS3 store (cell {ds.config['network']['cell']})")
    tables = ds.store.tables()
    transitions, outputs = tables["automaton_transitions"], tables["automaton_outputs"]
    starts, n_states = tables["automaton_start"], tables["automaton_n_states"]
    rng = np.random.default_rng(seed)
    symbols = rng.integers(0, alphabet, (sequences, length))  # the first `alphabet` symbols
    xs = torch.nn.functional.one_hot(torch.tensor(symbols), N_INPUTS).float()
    rows = []
    for n in ids:
        a = int(ds.task[n])
        want = replay(transitions[a], outputs[a], int(starts[a]), symbols)
        net = torch_lstm_net(ds.config["network"], ds.layout, np.asarray(ds.weights[int(n)]))
        with torch.no_grad():
            got = net(xs).argmax(-1).numpy()
        right = got == want
        rows.append(dict(net=int(n), automaton=a, states=int(n_states[a]),
                         accuracy=float(right.mean()),
                         sequences_right=float(right.all(axis=1).mean()),
                         by_step=right.mean(axis=0),
                         stored=float(ds.val_accuracy[int(n), 0])))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("--nets", default="status=converged", help="selection (default converged)")
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--length", type=int, help="steps per sequence (default 4x training length)")
    ap.add_argument("--threshold", type=float, default=0.99,
                    help="symbol accuracy a net must keep on the fresh sequences")
    ap.add_argument("--seed", type=int, default=54321)
    ap.add_argument("--symbols", type=int, default=N_INPUTS,
                    help="draw the inputs from the first K symbols only (what a net on the "
                         "alphabet curriculum, recipe.start_symbols, has met so far)")
    ap.add_argument("--by-step", action="store_true",
                    help="also print the symbol accuracy at each step of the sequences "
                         "(median over the nets, per automaton-size bin): step 1's output "
                         "needs only the input, step t's the state after t-1 inputs")
    args = ap.parse_args()

    if not 1 <= args.symbols <= N_INPUTS:
        raise SystemExit(f"--symbols must be in 1..{N_INPUTS}, got {args.symbols}")

    import mlds_jax

    ds = mlds_jax.open_dataset(args.store)
    ids = ds.select(args.nets)
    args.length = args.length or 4 * int(ds.config["recipe"]["train_length"])
    rows = replay_scores(ds, ids, args.sequences, args.length, args.seed, args.symbols)
    alphabet = "" if args.symbols == N_INPUTS else f" over the first {args.symbols} symbols"
    print(f"{len(rows)} nets ({args.nets}), {args.sequences} fresh sequences of "
          f"{args.length} steps{alphabet}")
    print("| net | automaton | states | stored val symbol acc | fresh symbol acc "
          "| fresh sequences right |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['net']} | {r['automaton']} | {r['states']} | {r['stored']:.4f} "
              f"| {r['accuracy']:.4f} | {r['sequences_right']:.3f} |")
    if rows:
        ok = sum(r["accuracy"] >= args.threshold for r in rows)
        print(f"{ok}/{len(rows)} nets at or above {args.threshold} symbol accuracy "
              f"(lowest {min(r['accuracy'] for r in rows):.4f})")
    if rows and args.by_step:
        print_by_step(rows, args.length)


def print_by_step(rows: list[dict], length: int) -> None:
    """Median symbol accuracy at steps 1, 2, 3, 4, 6, 8, 12, 16, ... per automaton-size bin."""
    from mlds_jax.research.reader import STATE_BINS

    steps = sorted({t for t in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, length)
                    if t <= length})
    print("\nmedian symbol accuracy at step t (t = 1: the output needs only the input)")
    print("| states | nets | " + " | ".join(f"t={t}" for t in steps) + " |")
    print("|---|---|" + "---|" * len(steps))
    for lo, hi in STATE_BINS:
        acc = [r["by_step"] for r in rows if lo <= r["states"] <= hi]
        if acc:
            med = np.median(np.stack(acc), axis=0)
            print(f"| {lo}-{hi} | {len(acc)} | "
                  + " | ".join(f"{med[t - 1]:.3f}" for t in steps) + " |")


if __name__ == "__main__":
    main()
