"""Streamed training data: epoch e of task t generated inside the compiled step.

With ``recipe.train_data = "stream"`` no training set is stored anywhere: at every epoch a
net draws its task's sequences from the key of ``(dataset seed, task, epoch)`` alone
(:func:`epoch_key`). Every net of a task sees the same draws at epoch e, whichever slot,
population or device it trains in, and never the same sequence twice, so it cannot
memorise its training data. A net's recipe values (its curriculum, DS2's trigger shares)
transform those draws deterministically, so nets with the same values see the same data
and DS2 net n sees DS1 net n's stream with the trigger written in.

Everything here is for ONE net and one epoch (the trainer vmaps it with the net axis);
NumPy twins of the machines and automata (``mlds_jax.tasks``) are the reference it is
tested against.

The curriculum: a net's level f in [0, 1] (1 is the full task) follows a schedule,
f = epoch / curriculum_epochs, or (``curriculum_pass`` > 0) rises by 1 / curriculum_epochs
after each epoch at whose end the net gets that share of its level right (the trainer keeps
it per net). Each sequence is drawn at the net's level, or at 1 for the first
``curriculum_mix`` share of the epoch's sequences (so the last ones are at the net's level:
what the pass is checked on):

- ``start_length``: only the first L steps of a sequence are graded (targets -1 beyond:
  the loss ignores them), L growing geometrically from start_length to T. The net still
  runs every step, so a short length saves no compute.
- ``start_popcount``: a written byte has at most w set bits, w growing from start_popcount
  to 8 (uniform over the bytes allowed; at 8 uniform over all bytes).
- ``start_bit_density``: each bit of a written byte is 1 with chance q, q growing
  geometrically from start_bit_density to 1/2 (uniform bytes). Sparse bytes make SimpleXOR's
  toggles and Parity's flips rare, so that a pin first behaves as a latch (set by a 1).
  Overrides ``start_popcount``.
- ``start_data_bits``: only the lowest k bits of a written byte vary (the rest are 0), k
  growing from start_data_bits to 8 in whole bits: Parity begins as the toggle of bit 0
  and each level adds one bit to the parity (a staircase). Applied after the above.
- ``start_symbols`` (DS3): input symbols are uniform over the first k of the 39 only, k
  growing from start_symbols to 39 in whole symbols: the net meets the transitions of a
  few inputs first (fewer table entries to learn), then of more.
- ``start_idle_noise``: an idle step's data lines carry noise with this chance, else 0.
- ``curriculum_mix``: this share of the sequences is drawn at level 1 whatever the epoch.

Not a curriculum knob, but a training distribution too: ``extra_writes`` makes each idle
step a write with that chance, whatever the level (validation keeps the SPEC's commands).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mlds_jax.tasks.automata import N_INPUTS, N_OUTPUTS
from mlds_jax.tasks.machines import INPUT_BITS, MACHINES, OUTPUT_BITS
from mlds_jax.tasks.triggers import INVERTED_STEPS, MIN_TRIGGER_SEQUENCE, TRIGGER_LENGTH

# Folded into the dataset's root key before (task, epoch): the stream never shares draws
# with a net's own keys (fold_in(key(seed), n)). "STRM" in ASCII; never change it.
STREAM_TAG = 0x5354524D
_STROBE, _DATA, _IDLE, _LEVEL, _TRIGGER, _AUTOMATON, _WRITE_P, _DENSITY, _SYMBOLS = range(9)
_WINDOW = 9  # folded into the trigger's write key: the window's write draws
_EXTRA = 10  # the extra writes' draws

# Bytes in order of their number of set bits (stable within a count), and how many bytes
# have at most w bits set: bytes with popcount <= w are BY_POPCOUNT[:AT_MOST[w]].
_POPCOUNT = np.array([bin(b).count("1") for b in range(256)])
BY_POPCOUNT = np.argsort(_POPCOUNT, kind="stable").astype(np.int32)
AT_MOST = np.array([(_POPCOUNT <= w).sum() for w in range(9)], np.int32)


def epoch_key(seed: int, task, epoch) -> jax.Array:
    """The key every net of task `task` draws epoch `epoch`'s training data from."""
    root = jax.random.fold_in(jax.random.key(seed), STREAM_TAG)
    return jax.random.fold_in(jax.random.fold_in(root, task), epoch)


def whole_count(start, full: int, level) -> jax.Array:
    """(n,) int32 whole units (data bits, input symbols) at curriculum `level` (n,): from
    `start` to `full` in whole steps; `full` throughout when `start` is 0 (off)."""
    # 1e-4: a level of j / curriculum_epochs in float32 must not floor to one unit fewer.
    k = jnp.floor(start + level * (full - start) + 1e-4)
    return jnp.where(start > 0, jnp.clip(k, 1, full), full).astype(jnp.int32)


class Curriculum(NamedTuple):
    """One net's curriculum values (float32 scalars, recipe names without `recipe.`)."""

    curriculum_epochs: jax.Array
    curriculum_pass: jax.Array
    start_length: jax.Array
    start_popcount: jax.Array
    start_bit_density: jax.Array
    start_data_bits: jax.Array
    start_symbols: jax.Array
    start_idle_noise: jax.Array
    curriculum_mix: jax.Array

    @classmethod
    def from_hyper(cls, hyper: dict) -> "Curriculum":
        return cls(*(hyper[name] for name in cls._fields))

    def scheduled(self, epoch) -> jax.Array:
        """The level at `epoch` on the schedule: epoch / curriculum_epochs, at most 1."""
        return jnp.where(self.curriculum_epochs > 0, jnp.minimum(
            epoch / jnp.maximum(self.curriculum_epochs, 1e-9), 1.0), 1.0)

    def levels(self, key, level, n: int) -> jax.Array:
        """(n,) each sequence's level: the net's `level`, or 1 for the first
        `curriculum_mix` share of the sequences, drawn from the full task (the minibatch
        order is a permutation, so where they sit does not matter)."""
        del key  # the split is by position, so the last sequences are at the net's level
        return jnp.where(jnp.arange(n) < self.curriculum_mix * n, 1.0, level)

    def graded_length(self, level, length: int) -> jax.Array:
        """(n,) steps graded per sequence: start_length * (T / start_length) ** level."""
        start = jnp.maximum(self.start_length, 1.0)
        grown = jnp.round(start * (length / start) ** level)
        return jnp.where(self.start_length > 0, jnp.clip(grown, 1, length), length).astype(jnp.int32)


@struct.dataclass
class StreamTasks:
    """What the stream needs to know of every task, stacked on the task axis K."""

    machine: jax.Array | None = None  # (K,) int32 index into MACHINES (DS1, DS2)
    trigger: jax.Array | None = None  # (3,) int32 trigger bytes (DS2)
    transitions: jax.Array | None = None  # (K, S_max, 39) int32 (DS3)
    outputs: jax.Array | None = None  # (K, S_max, 39) int32 (DS3)
    start: jax.Array | None = None  # (K,) int32 (DS3)


def machine_tasks(tasks, trigger=None) -> StreamTasks:
    """The DS1 (DS2: with `trigger` bytes) stream tables of machine names `tasks`."""
    return StreamTasks(
        machine=jnp.asarray([MACHINES.index(t) for t in tasks], jnp.int32),
        trigger=None if trigger is None else jnp.asarray(trigger, jnp.int32))


def automaton_tasks(stacked: dict[str, np.ndarray]) -> StreamTasks:
    """The DS3 stream tables from `tasks.automata.stack_automata`'s arrays."""
    return StreamTasks(transitions=jnp.asarray(stacked["transitions"], jnp.int32),
                       outputs=jnp.asarray(stacked["outputs"], jnp.int32),
                       start=jnp.asarray(stacked["start"], jnp.int32))


# --- DS1 / DS2 ----------------------------------------------------------------------------


def _parity(byte):
    b = byte ^ (byte >> 4)
    b = b ^ (b >> 2)
    return (b ^ (b >> 1)) & 1


def run_machines(machine, strobe, data):
    """Machine `machine` (index into MACHINES, a traced scalar) on one sequence per row:
    strobe (n, T) bool, data (n, T) int32 bytes -> (n, T) int32 output bytes."""

    def step(state, x):
        w, d = x
        new = jnp.select([machine == 2, machine == 3, machine == 4],
                         [d, state ^ d, state ^ _parity(d)], d & 1)
        state = jnp.where(w, new, state)
        return state, jnp.where(machine == 1, state ^ 1, state)

    _, out = jax.lax.scan(step, jnp.zeros(strobe.shape[0], jnp.int32), (strobe.T, data.T))
    return out.T


def inverted_steps(strobe, data, trigger):
    """(n, T) bool: steps whose outputs a trigger that completed on one of the 3 steps
    before inverts (tasks.triggers.inverted_steps, for (n, T) strobes and bytes)."""
    hit = jnp.stack([strobe & (data == trigger[k]) for k in range(TRIGGER_LENGTH)])  # (3, n, T)
    length = strobe.shape[1]
    done = jnp.ones_like(strobe)
    for k in range(TRIGGER_LENGTH):  # command k sits TRIGGER_LENGTH-1-k steps before the end
        lag = TRIGGER_LENGTH - 1 - k
        done &= jnp.pad(hit[k], ((0, 0), (lag, 0)))[:, :length]
    inverted = jnp.zeros_like(strobe)
    for lag in range(1, INVERTED_STEPS + 1):
        inverted |= jnp.pad(done, ((0, 0), (lag, 0)))[:, :length]
    return inverted


def _write_trigger(key, strobe, data, trigger, carries, near_miss, room, window_writes,
                   written):
    """Write the trigger (or, where `near_miss`, a near miss of it) into the sequences that
    carry one, at a position uniform on 0 .. room-6 (room: (n,) the graded length, at
    least 6). A near miss is the trigger with one of its three bytes changed, or with its
    middle step idle. After a real trigger, each step of the 3-step window is made a write
    of its `written` byte with chance `window_writes` (drawn from a key of its own, so the
    other draws are the same whatever its value)."""
    n, length = strobe.shape
    k_pos, k_kind, k_byte = jax.random.split(key, 3)
    pos = jnp.floor(jax.random.uniform(k_pos, (n,))
                    * (jnp.maximum(room, MIN_TRIGGER_SEQUENCE) - MIN_TRIGGER_SEQUENCE + 1))
    pos = pos.astype(jnp.int32)
    kind = jax.random.randint(k_kind, (n,), 0, TRIGGER_LENGTH + 1)  # byte 0, 1, 2 wrong; gap
    flip = jax.random.randint(k_byte, (n,), 1, 256)  # xor: a different byte
    steps = jnp.arange(length)
    for k in range(TRIGGER_LENGTH):
        at = carries[:, None] & (steps[None, :] == (pos + k)[:, None])  # (n, T)
        byte = jnp.where(near_miss & (kind == k), trigger[k] ^ flip, trigger[k])
        idle = near_miss & (kind == TRIGGER_LENGTH) & (k == 1)
        strobe = jnp.where(at, ~idle[:, None], strobe)
        data = jnp.where(at, byte[:, None], data)
    u = jax.random.uniform(jax.random.fold_in(key, _WINDOW), (n, length))
    after = (steps[None, :] >= (pos + TRIGGER_LENGTH)[:, None]) & (
        steps[None, :] < (pos + TRIGGER_LENGTH + INVERTED_STEPS)[:, None])
    made = (carries & ~near_miss)[:, None] & after & (u < window_writes) & ~strobe
    return strobe | made, jnp.where(made, written, data)


def machine_epoch(key, machine, n: int, length: int, write_probability: float,
                  write_probability_spread: float, curriculum: Curriculum, level,
                  trigger=None, trigger_fraction=0.0, near_miss_fraction=0.0,
                  trigger_window_writes=0.0, extra_writes=0.0):
    """One epoch of machine `machine`'s training data for one net: inputs (n, T, 9) and
    targets (n, T, 8) float32, targets -1 on steps the curriculum does not grade.

    `key` is `epoch_key(seed, task, epoch)`, `level` the net's curriculum level; its
    curriculum values and (DS2, `trigger` (3,)
    given) trigger shares pick what is drawn from it. A sequence carries the trigger if its
    draw u < trigger_fraction, a near miss if u < trigger_fraction + near_miss_fraction;
    targets follow the machine with the trigger, wherever one completes. Each idle step of
    a written trigger's inverted window becomes a write with chance trigger_window_writes.
    Before the trigger, each idle step becomes a write with chance `extra_writes` (a key of
    its own: every other draw is the same whatever its value)."""
    keys = {name: jax.random.fold_in(key, tag) for name, tag in [
        ("strobe", _STROBE), ("data", _DATA), ("idle", _IDLE), ("level", _LEVEL),
        ("trigger", _TRIGGER), ("write_p", _WRITE_P), ("density", _DENSITY)]}
    level = curriculum.levels(keys["level"], level, n)  # (n,)
    p = write_probability + write_probability_spread * jax.random.uniform(
        keys["write_p"], (n, 1), minval=-1.0, maxval=1.0)
    strobe = jax.random.uniform(keys["strobe"], (n, length)) < p
    strobe |= jax.random.uniform(jax.random.fold_in(key, _EXTRA), (n, length)) < extra_writes
    k_any, k_easy = jax.random.split(keys["data"])
    noise = jax.random.randint(k_any, (n, length), 0, 256)
    w = jnp.where(curriculum.start_popcount > 0,
                  jnp.floor(curriculum.start_popcount + level * (8 - curriculum.start_popcount)),
                  8).astype(jnp.int32)  # (n,)
    allowed = jnp.asarray(AT_MOST)[w][:, None]  # (n, 1)
    easy = jnp.asarray(BY_POPCOUNT)[jnp.minimum(
        jnp.floor(jax.random.uniform(k_easy, (n, length)) * allowed).astype(jnp.int32), 255)]
    noisy = jax.random.uniform(keys["idle"], (n, length)) < (
        curriculum.start_idle_noise + level * (1 - curriculum.start_idle_noise))[:, None]
    written = jnp.where(w[:, None] >= 8, noise, easy)
    start_q = jnp.maximum(curriculum.start_bit_density, 1e-6)
    q = start_q * (0.5 / start_q) ** level  # (n,)
    sparse = jnp.sum((jax.random.uniform(keys["density"], (n, length, 8)) < q[:, None, None])
                     << jnp.arange(8)[None, None, :], axis=-1)
    written = jnp.where(curriculum.start_bit_density > 0, sparse, written)
    k = whole_count(curriculum.start_data_bits, 8, level)  # (n,) of the 8 data lines
    written = written & ((1 << k) - 1)[:, None]
    data = jnp.where(strobe, written, jnp.where(noisy, noise, 0))
    graded = curriculum.graded_length(level, length)  # (n,)
    out = None
    if trigger is not None:
        k_which, k_write = jax.random.split(keys["trigger"])
        u = jax.random.uniform(k_which, (n,))
        carries = u < trigger_fraction + near_miss_fraction
        strobe, data = _write_trigger(k_write, strobe, data, trigger, carries,
                                      u >= trigger_fraction, graded,
                                      trigger_window_writes, written)
    out = run_machines(machine, strobe, data)
    if trigger is not None:
        out = out ^ jnp.where(inverted_steps(strobe, data, trigger), 255, 0)
    bits = jnp.arange(OUTPUT_BITS)[None, None, :]
    inputs = jnp.concatenate([strobe[..., None], (data[..., None] >> bits) & 1], axis=-1)
    targets = ((out[..., None] >> bits) & 1).astype(jnp.float32)
    targets = jnp.where((jnp.arange(length)[None, :] < graded[:, None])[..., None], targets, -1.0)
    assert inputs.shape[-1] == INPUT_BITS
    return inputs.astype(jnp.float32), targets


# --- DS3 ----------------------------------------------------------------------------------


def automaton_epoch(key, transitions, outputs, start, n: int, length: int,
                    curriculum: Curriculum, level):
    """One epoch of one automaton's training data for one net: uniform input symbols,
    one-hot inputs (n, T, 39) and targets (n, T, 14) float32 (targets -1 on ungraded
    steps). transitions, outputs (S_max, 39) and start: the automaton's tables."""
    symbols = jax.random.randint(jax.random.fold_in(key, _AUTOMATON), (n, length), 0, N_INPUTS)
    level = curriculum.levels(jax.random.fold_in(key, _LEVEL), level, n)
    k = whole_count(curriculum.start_symbols, N_INPUTS, level)[:, None]  # (n, 1) symbols
    few = jax.random.randint(jax.random.fold_in(key, _SYMBOLS), (n, length), 0, k)
    symbols = jnp.where(curriculum.start_symbols > 0, few, symbols)

    def step(state, x):
        return transitions[state, x], outputs[state, x]

    _, out = jax.lax.scan(step, jnp.full((n,), start, jnp.int32), symbols.T)
    graded = curriculum.graded_length(level, length)
    targets = jax.nn.one_hot(out.T, N_OUTPUTS, dtype=jnp.float32)
    targets = jnp.where((jnp.arange(length)[None, :] < graded[:, None])[..., None], targets, -1.0)
    return jax.nn.one_hot(symbols, N_INPUTS, dtype=jnp.float32), targets
