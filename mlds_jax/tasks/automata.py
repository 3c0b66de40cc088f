"""DS3: random deterministic Mealy automata with hidden state (pure NumPy).

An automaton has states ``0 .. S-1``, a start state, and for every (state, input symbol)
a next state and an output symbol: the output belongs to the transition (Mealy). Running it
on inputs ``x_0 .. x_{T-1}`` from ``s_0 = start`` gives, at every step t,

    y_t = outputs[s_t, x_t],   s_{t+1} = transitions[s_t, x_t],

so the output of step t is emitted by the transition that step takes. Inputs are one of
``N_INPUTS`` = 39 symbols, outputs one of ``N_OUTPUTS`` = 14.

Automaton ``index`` of a dataset is drawn from ``SeedSequence([dataset seed, index, TAG])``
alone. Its state count is uniform in ``STATE_RANGE`` = (16, 48), both ends included:

- at least 16, so that every automaton has more states than the 14 output symbols can name:
  the current output never identifies the state, which has to be inferred from history;
- at most 48, so that a 64-wide LSTM layer has room to hold the state, and so that the
  tests' exact Hamiltonian-cycle search stays fast.

Every automaton returned by :func:`make_automaton` has, by construction (and re-drawn from
the same generator until the checks below hold, which almost always happens first time):

1. a Hamiltonian cycle: a random order of all states, each linked to the next (the last to
   the first) by a transition on a random input symbol;
2. a total transition function: a next state in ``0 .. S-1`` for every state and every one
   of the 39 inputs (self-loops allowed);
3. hidden state, meaning all of:

   a. more states than distinct output symbols used (S >= 16 > 14);
   b. two distinct states p != q with identical output rows
      (``outputs[p, x] == outputs[q, x]`` for every input x): the output of the next step
      cannot tell p from q, so which of two transitions was taken, one into p or one into
      q, does not show in the output when it is taken or on the step after;
   c. the automaton is minimal: every two distinct states are told apart by some input
      sequence. So (a) and (b) are about real states, not duplicates that could be merged,
      and a network has to track the hidden state to predict the outputs;

4. every one of the 14 output symbols used on at least one transition (so the 14-way
   classifier has no dead class).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence

import numpy as np

N_INPUTS = 39  # input symbols
N_OUTPUTS = 14  # output symbols
STATE_RANGE = (16, 48)  # inclusive range of state counts; see the module docstring
# Mixed into every automaton's seed so DS3 never shares a stream with another use of
# (seed, index); never change it (stores depend on it). "DS3A" in ASCII.
TAG = 0x44533341


def _as_table(name: str, value) -> np.ndarray:
    table = np.array(value)  # a copy, owned by the automaton
    if table.ndim != 2 or table.shape[1] != N_INPUTS or table.shape[0] < 1:
        raise ValueError(f"{name} must have shape (S, {N_INPUTS}), got {table.shape}")
    if not np.issubdtype(table.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {table.dtype}")
    return table.astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class Automaton:
    """A Mealy automaton. Arrays are int32 and read-only.

    Compared by identity (arrays have no single truth value); use :func:`to_dict` to compare
    contents.
    """

    transitions: np.ndarray  # (S, 39) next state in 0..S-1
    outputs: np.ndarray  # (S, 39) output symbol in 0..13
    start: int  # start state in 0..S-1

    def __post_init__(self):
        transitions = _as_table("transitions", self.transitions)
        outputs = _as_table("outputs", self.outputs)
        n = transitions.shape[0]
        if outputs.shape != transitions.shape:
            raise ValueError(
                f"outputs must have the shape of transitions {transitions.shape}, "
                f"got {outputs.shape}"
            )
        if transitions.min() < 0 or transitions.max() >= n:
            raise ValueError(f"transitions must be states in 0..{n - 1}")
        if outputs.min() < 0 or outputs.max() >= N_OUTPUTS:
            raise ValueError(f"outputs must be symbols in 0..{N_OUTPUTS - 1}")
        try:
            start = operator.index(self.start)
        except TypeError:
            raise ValueError(f"start must be an integer state, got {self.start!r}") from None
        if not 0 <= start < n:
            raise ValueError(f"start must be a state in 0..{n - 1}, got {start}")
        transitions.setflags(write=False)
        outputs.setflags(write=False)
        object.__setattr__(self, "transitions", transitions)
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "start", int(start))

    @property
    def n_states(self) -> int:
        return self.transitions.shape[0]


def _classes(transitions: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Moore partition refinement: (S,) equivalence class of every state."""
    _, classes = np.unique(outputs, axis=0, return_inverse=True)
    classes = classes.reshape(-1)
    while True:
        signature = np.concatenate([classes[:, None], classes[transitions]], axis=1)
        _, refined = np.unique(signature, axis=0, return_inverse=True)
        refined = refined.reshape(-1)
        if refined.max() == classes.max():
            return refined
        classes = refined


def _is_minimal(transitions: np.ndarray, outputs: np.ndarray) -> bool:
    return _classes(transitions, outputs).max() + 1 == transitions.shape[0]


def _draw(rng: np.random.Generator) -> Automaton:
    """One candidate automaton; make_automaton checks it."""
    lo, hi = STATE_RANGE
    n = int(rng.integers(lo, hi + 1))
    transitions = rng.integers(0, n, size=(n, N_INPUTS))  # (S, 39) total by construction
    # The Hamiltonian cycle: state order[i] -> order[i+1] on a random symbol of its own.
    order = rng.permutation(n)
    symbols = rng.integers(0, N_INPUTS, size=n)
    transitions[order, symbols] = np.roll(order, -1)
    outputs = rng.integers(0, N_OUTPUTS, size=(n, N_INPUTS))
    # Hidden state (b): two distinct states share their whole output row.
    p, q = rng.choice(n, size=2, replace=False)
    outputs[q] = outputs[p]
    start = int(rng.integers(0, n))
    return Automaton(transitions, outputs, start)


def make_automaton(seed: int, index: int) -> Automaton:
    """Automaton ``index`` of the dataset with seed ``seed``, from (seed, index) alone."""
    seed = _check_nonnegative("seed", seed)
    index = _check_nonnegative("index", index)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, TAG]))
    while True:
        a = _draw(rng)
        # The cycle, totality and (a), (b) hold by construction; minimality and full
        # output use almost always do, and otherwise the next draw is taken.
        if _is_minimal(a.transitions, a.outputs) and np.unique(a.outputs).size == N_OUTPUTS:
            return a


def make_automata(seed: int, count: int) -> list[Automaton]:
    """Automata ``0 .. count-1`` of the dataset with seed ``seed``."""
    count = _check_nonnegative("count", count)
    return [make_automaton(seed, a) for a in range(count)]


def _check_nonnegative(name: str, value) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def run_automaton(a: Automaton, inputs: np.ndarray) -> np.ndarray:
    """Run ``a`` on input symbols.

    inputs: (..., T) integers in 0..38; every leading index is a sequence starting from
    ``a.start``. Returns (..., T) int32: the output symbol of each step's transition.
    """
    inputs = np.asarray(inputs)
    if inputs.ndim < 1:
        raise ValueError(f"inputs must have shape (..., T), got {inputs.shape}")
    if not np.issubdtype(inputs.dtype, np.integer):
        raise ValueError(f"inputs must be integer symbols, got dtype {inputs.dtype}")
    if inputs.size and (inputs.min() < 0 or inputs.max() >= N_INPUTS):
        raise ValueError(f"inputs must be symbols in 0..{N_INPUTS - 1}")
    state = np.full(inputs.shape[:-1], a.start, dtype=np.int32)  # (...)
    out = np.empty(inputs.shape, dtype=np.int32)  # (..., T)
    for t in range(inputs.shape[-1]):
        x = inputs[..., t]
        out[..., t] = a.outputs[state, x]
        state = a.transitions[state, x]
    return out


def random_inputs(rng: np.random.Generator, n_sequences: int, length: int) -> np.ndarray:
    """Uniform random input symbols, (n_sequences, length) int32."""
    if n_sequences < 1:
        raise ValueError(f"n_sequences must be positive, got {n_sequences}")
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    return rng.integers(0, N_INPUTS, size=(n_sequences, length), dtype=np.int32)


def to_dict(a: Automaton) -> dict:
    """A JSON-able dict: {"transitions": [[...]], "outputs": [[...]], "start": int}."""
    return {
        "transitions": a.transitions.tolist(),
        "outputs": a.outputs.tolist(),
        "start": a.start,
    }


def from_dict(d: dict) -> Automaton:
    """The inverse of :func:`to_dict` (validates the tables)."""
    missing = {"transitions", "outputs", "start"} - set(d)
    if missing:
        raise ValueError(f"automaton dict lacks {sorted(missing)}")
    return Automaton(np.array(d["transitions"]), np.array(d["outputs"]), d["start"])


def stack_automata(automata: Sequence[Automaton]) -> dict[str, np.ndarray]:
    """Stacked int32 arrays for storing A automata in one group.

    Returns {"transitions": (A, S_max, 39), "outputs": (A, S_max, 39), "start": (A,),
    "n_states": (A,)}, where S_max is the largest state count and rows of automaton a past
    ``n_states[a]`` are padded with -1.
    """
    if not automata:
        raise ValueError("automata must not be empty")
    s_max = max(a.n_states for a in automata)
    shape = (len(automata), s_max, N_INPUTS)
    stacked = {
        "transitions": np.full(shape, -1, dtype=np.int32),
        "outputs": np.full(shape, -1, dtype=np.int32),
        "start": np.array([a.start for a in automata], dtype=np.int32),
        "n_states": np.array([a.n_states for a in automata], dtype=np.int32),
    }
    for k, a in enumerate(automata):
        stacked["transitions"][k, : a.n_states] = a.transitions
        stacked["outputs"][k, : a.n_states] = a.outputs
    return stacked


def unstack_automata(stacked: dict[str, np.ndarray]) -> list[Automaton]:
    """The inverse of :func:`stack_automata`: what a reader rebuilds from the store."""
    n_states = np.asarray(stacked["n_states"])
    return [
        Automaton(
            np.asarray(stacked["transitions"][k, :n]),
            np.asarray(stacked["outputs"][k, :n]),
            int(stacked["start"][k]),
        )
        for k, n in enumerate(n_states.tolist())
    ]
