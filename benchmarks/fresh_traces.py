"""Do the nets a store calls converged mimic their machine on traces they never saw?

Fresh random commands (a seed the dataset never used), the machines written here again from
SPEC.md's table without the package's code, each net run in PyTorch from its stored
weights (`Dataset.to_torch`). Per net: every pin's bit accuracy, the worst pin, and the share
of sequences with every output right.

    python benchmarks/fresh_traces.py out/ds1-demo.zarr              # converged nets, 4x length
    python benchmarks/fresh_traces.py out/ds1-demo.zarr --nets all --sequences 512 --length 64

The fresh traces are 4x the training length unless `--length` says otherwise; the tally
per machine at the end gives the share of nets at or above `--threshold` on every pin.

DS2 stores: the trigger is written again from SPEC.md too (three consecutive write steps of
the config's three bytes invert all 8 pins on the 3 steps after the third), and every net is
scored on two fresh sets: clean commands, and the same commands with the trigger written at
a random position of each sequence; its worst pin is the lower of the two. `--window`
(DS2) says where a net's errors on the triggered set are: the share of inverted steps it
gets wrong where a new byte was written since the trigger (the output is that byte
inverted) and where none was (the trigger's last byte, held, inverted), and the share of
all other steps.
`--flips` (Parity) asks whether a net flips its output on every write of an odd byte or only
on the first few of a sequence (a counter that runs out): of the steps it enters right, the
share it gets wrong, for flipping writes by how many flips came before in the sequence, and
for the other writes and idle steps.
DS3 stores: `benchmarks/ds3_replay.py`.

    python benchmarks/fresh_traces.py out/s19lf/base.zarr --nets status=capped --window
"""

from __future__ import annotations

import argparse

import numpy as np


def machine_trace(name: str, strobe: np.ndarray, data: np.ndarray) -> np.ndarray:
    """(S, T) strobe and (S, T, 8) data bits (LSB first) -> (S, T, 8) output pins."""
    s, t = strobe.shape
    pins = np.zeros((s, t, 8), np.uint8)
    state = np.zeros((s, 8), np.uint8)  # register bits (single-bit machines use bit 0)
    for step in range(t):
        w = strobe[:, step].astype(bool)
        d = data[:, step]
        if name in ("SingleDirectMachine", "SingleInvertMachine", "EightBitMachine"):
            state[w] = d[w]
        elif name == "SimpleXORMachine":
            state[w] ^= d[w]
        elif name == "ParityMachine":
            state[w, 0] ^= (d[w].sum(axis=1) % 2).astype(np.uint8)
        else:
            raise ValueError(f"no reference for {name}")
        out = state.copy()
        if name != "EightBitMachine" and name != "SimpleXORMachine":
            out[:, 1:] = 0
        if name == "SingleInvertMachine":
            out[:, 0] = 1 - out[:, 0]
        pins[:, step] = out
    return pins


def completions(strobe: np.ndarray, data: np.ndarray, trigger) -> np.ndarray:
    """(S, T) True at step t where steps t-2, t-1, t are writes of trigger[0], [1], [2]."""
    byte = (data.astype(np.int64) << np.arange(8)).sum(axis=2)  # (S, T), LSB first
    hit = np.zeros(strobe.shape, bool)
    for t in range(2, strobe.shape[1]):
        hit[:, t] = np.all([(strobe[:, t - 2 + i] == 1) & (byte[:, t - 2 + i] == trigger[i])
                            for i in range(3)], axis=0)
    return hit


def invert_after_triggers(strobe: np.ndarray, data: np.ndarray, pins: np.ndarray,
                          trigger) -> np.ndarray:
    """`pins` (S, T, 8) with every pin inverted on the 3 steps after each completed trigger
    (`completions`); windows do not stack."""
    hit = completions(strobe, data, trigger)
    inverted = np.zeros(strobe.shape, bool)
    for lag in (1, 2, 3):
        inverted[:, lag:] |= hit[:, :-lag]
    return np.where(inverted[..., None], 1 - pins, pins)


def with_trigger(strobe: np.ndarray, data: np.ndarray, trigger, seed: int):
    """Copies of the commands with the trigger written at a random position 0..T-6 of each
    sequence (so its whole 3-step window lies inside)."""
    strobe, data = strobe.copy(), data.copy()
    rng = np.random.default_rng(seed + 1)
    for s, pos in enumerate(rng.integers(0, strobe.shape[1] - 5, strobe.shape[0])):
        for i, b in enumerate(trigger):
            strobe[s, pos + i] = 1
            data[s, pos + i] = (b >> np.arange(8)) & 1
    return strobe, data


def fresh_commands(sequences: int, length: int, write_probability: float, seed: int):
    """Random commands from `seed`: strobe (S, T), data bits (S, T, 8) as uint8, and the
    nets' float32 torch input (S, T, 9)."""
    import torch

    rng = np.random.default_rng(seed)
    strobe = (rng.random((sequences, length)) < write_probability).astype(np.uint8)
    data = rng.integers(0, 2, (sequences, length, 8), dtype=np.uint8)
    xs = torch.tensor(np.concatenate([strobe[..., None], data], axis=2), dtype=torch.float32)
    return strobe, data, xs


def window_breakdown(strobe: np.ndarray, data: np.ndarray, wrong: np.ndarray,
                     trigger) -> dict:
    """Where the wrong steps `wrong` (S, T) of a triggered set lie: the share of the inverted
    steps that are wrong where a new byte was written since the trigger completed (the
    output is that byte inverted), and where none was (the trigger's last byte, held,
    inverted), and the share of the other steps; with the number of steps behind each."""
    done = completions(strobe, data, trigger)
    inverted = np.zeros(done.shape, bool)
    new = np.zeros(done.shape, bool)  # inverted, and a write since the latest completion
    for lag in (1, 2, 3):  # nearest completion first
        for step in range(lag, done.shape[1]):
            hit = done[:, step - lag] & ~inverted[:, step]
            inverted[:, step] |= hit
            new[:, step] |= hit & (strobe[:, step - lag + 1:step + 1] == 1).any(axis=1)
    parts = {"window_new": inverted & new, "window_held": inverted & ~new,
             "elsewhere": ~inverted}
    return {name: (float(wrong[m].mean()) if m.any() else float("nan"), int(m.sum()))
            for name, m in parts.items()}


FLIP_BINS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 11), (12, None))


def flip_breakdown(strobe: np.ndarray, data: np.ndarray, right: np.ndarray) -> dict:
    """Parity: of the steps a net enters right (the previous step right, or the first step),
    the share `right` (S, T) calls wrong: on writes of an odd byte (the output flips) by the
    number of such writes before in the sequence (FLIP_BINS), on writes of an even byte,
    and on idle steps; with the number of steps behind each."""
    odd = (strobe == 1) & (data.sum(axis=2) % 2 == 1)
    before = np.cumsum(odd, axis=1) - odd
    entered = np.concatenate([np.ones((len(right), 1), bool), right[:, :-1]], axis=1)
    parts = {f"flip {lo}+" if hi is None else f"flip {lo}-{hi}":
             odd & (before >= lo) & (before <= (np.inf if hi is None else hi))
             for lo, hi in FLIP_BINS}
    parts.update({"even write": (strobe == 1) & ~odd, "idle": strobe == 0})
    return {name: (float((~right[m & entered]).mean()) if (m & entered).any() else float("nan"),
                   int((m & entered).sum())) for name, m in parts.items()}


def flip_scores(ds, ids, sequences: int, length: int, seed: int) -> list[dict]:
    """Per Parity net: `flip_breakdown` of pin 0 on fresh commands."""
    import torch

    strobe, data, xs = fresh_commands(sequences, length,
                                      ds.config["recipe"]["write_probability"], seed)
    want = machine_trace("ParityMachine", strobe, data)[..., 0] > 0
    rows = []
    for n in ids:
        with torch.no_grad():
            right = (ds.to_torch(int(n))(xs).numpy()[..., 0] > 0) == want
        rows.append(dict(net=int(n), **flip_breakdown(strobe, data, right)))
    return rows


def window_scores(ds, ids, sequences: int, length: int, seed: int) -> list[dict]:
    """Per DS2 net: `window_breakdown` of its wrong steps (any pin wrong) on fresh commands
    with the trigger written in."""
    import torch

    trigger = ds.config["trigger"]["bytes"]
    strobe, data, _ = fresh_commands(sequences, length,
                                     ds.config["recipe"]["write_probability"], seed)
    strobe, data = with_trigger(strobe, data, trigger, seed)
    xs = torch.tensor(np.concatenate([strobe[..., None], data], axis=2), dtype=torch.float32)
    rows = []
    for n in ids:
        task = ds.task_names[int(ds.task[n])]
        want = invert_after_triggers(strobe, data, machine_trace(task, strobe, data), trigger)
        with torch.no_grad():
            wrong = ((ds.to_torch(int(n))(xs).numpy() > 0) != (want > 0)).any(axis=2)
        rows.append(dict(net=int(n), task=task, **window_breakdown(strobe, data, wrong, trigger)))
    return rows


def fresh_scores(ds, ids, sequences: int, length: int, seed: int) -> list[dict]:
    """Per net: the worst pin over every fresh set (DS1: one; DS2: clean and triggered),
    which pin, the share of sequences entirely right (the lower set's), and the stored
    validation worst pin (DS2: the lower of clean and triggered)."""
    import torch

    strobe, data, _ = fresh_commands(sequences, length,
                                     ds.config["recipe"]["write_probability"], seed)
    trigger = (ds.config.get("trigger") or {}).get("bytes")
    sets = [(strobe, data)]
    if trigger:
        sets.append(with_trigger(strobe, data, trigger, seed))
    stored = [ds.accuracy_names.index(c) for c in ds.attrs["criterion_names"]]
    scored = []  # per set: torch input, targets per machine
    for st, dt in sets:
        xs = torch.tensor(np.concatenate([st[..., None], dt], axis=2), dtype=torch.float32)
        want = {}
        for name in ds.task_names:
            want[name] = machine_trace(name, st, dt)
            if trigger:
                want[name] = invert_after_triggers(st, dt, want[name], trigger)
        scored.append((xs, want))
    rows = []
    for n in ids:
        task = ds.task_names[int(ds.task[n])]
        net = ds.to_torch(int(n))
        worst = None
        for xs, want in scored:
            with torch.no_grad():
                right = (net(xs).numpy() > 0) == (want[task] > 0)
            per_pin = right.mean(axis=(0, 1))
            row = dict(worst_pin=float(per_pin.min()), worst_pin_index=int(per_pin.argmin()),
                       sequences_right=float(right.all(axis=(1, 2)).mean()))
            if worst is None or row["worst_pin"] < worst["worst_pin"]:
                worst = row
        rows.append(dict(net=int(n), task=task, **worst,
                         stored_worst_pin=float(min(ds.val_accuracy[n, c] for c in stored))))
    return rows


def pooled(rows: list[dict], name: str) -> tuple[float, int]:
    """(share, steps) of column `name` over every row, weighted by each row's steps."""
    steps = sum(r[name][1] for r in rows)
    wrong = sum(r[name][0] * r[name][1] for r in rows if r[name][1])
    return (wrong / steps if steps else float("nan"), steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("--nets", default="status=converged", help="selection (default converged)")
    ap.add_argument("--sequences", type=int, default=512)
    ap.add_argument("--length", type=int, help="steps per trace (default 4x training length)")
    ap.add_argument("--threshold", type=float, default=0.995,
                    help="worst-pin accuracy a net must keep on the fresh traces")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--window", action="store_true",
                    help="DS2: where each net's errors on triggered traces lie")
    ap.add_argument("--flips", action="store_true",
                    help="Parity: each net's errors by the flips before them in the sequence")
    args = ap.parse_args()

    import mlds_jax

    ds = mlds_jax.open_dataset(args.store)
    ids = ds.select(args.nets)
    args.length = args.length or 4 * int(ds.config["recipe"]["train_length"])
    if ds.config.get("automata"):
        raise SystemExit("a DS3 store: its fresh-trace check is benchmarks/ds3_replay.py")
    if args.flips:
        ids = [n for n in ids if ds.task_names[int(ds.task[n])] == "ParityMachine"]
        if not ids:
            raise SystemExit("--flips: no Parity net in the selection")
        rows = flip_scores(ds, ids, args.sequences, args.length, args.seed)
        names = [k for k in rows[0] if k != "net"]
        print(f"{len(rows)} Parity nets ({args.nets}), {args.sequences} fresh sequences of "
              f"{args.length} steps; of the steps a net enters right, the share it gets wrong")
        print("| net | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for r in rows + [dict(net="all", **{k: pooled(rows, k) for k in names})]:
            print(f"| {r['net']} | " + " | ".join(f"{r[k][0]:.3f}" for k in names) + " |")
        return
    if args.window:
        if not ds.config.get("trigger"):
            raise SystemExit("--window needs a DS2 store (one with a trigger)")
        rows = window_scores(ds, ids, args.sequences, args.length, args.seed)
        print(f"{len(rows)} nets ({args.nets}), {args.sequences} fresh sequences of "
              f"{args.length} steps with the trigger written in; share of steps wrong")
        print("| net | machine | inverted, a new byte (steps) | inverted, the trigger's byte "
              "held (steps) | elsewhere |")
        print("|---|---|---|---|---|")
        for r in rows:
            (ww, nw), (wi, ni), (we, _) = r["window_new"], r["window_held"], r["elsewhere"]
            print(f"| {r['net']} | {r['task'].removesuffix('Machine')} | {ww:.3f} ({nw}) "
                  f"| {wi:.3f} ({ni}) | {we:.5f} |")
        return
    rows = fresh_scores(ds, ids, args.sequences, args.length, args.seed)
    print(f"{len(rows)} nets ({args.nets}), {args.sequences} fresh sequences of "
          f"{args.length} steps" + (" (clean and triggered: the lower of the two)"
                                    if ds.config.get("trigger") else ""))
    print("| net | machine | stored val worst pin | fresh worst pin (pin) | fresh sequences right |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['net']} | {r['task'].removesuffix('Machine')} | {r['stored_worst_pin']:.4f} "
              f"| {r['worst_pin']:.4f} ({r['worst_pin_index']}) | {r['sequences_right']:.3f} |")
    if rows:
        print(f"lowest fresh worst-pin accuracy: {min(r['worst_pin'] for r in rows):.4f}")
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        ok = sum(r["worst_pin"] >= args.threshold for r in mine)
        print(f"{task}: {ok}/{len(mine)} nets at or above {args.threshold} on every pin "
              f"(lowest {min(r['worst_pin'] for r in mine):.4f})")


if __name__ == "__main__":
    main()
