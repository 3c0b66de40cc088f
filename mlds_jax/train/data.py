"""A task's fixed training and validation sets, derived from (dataset seed, task) alone.

Each split draws from its own ``SeedSequence([seed, task, split])``, so the two sets are
independent and resizing one never changes the other. Task index ``t`` is ``MACHINES[t]``.

- DS1 (:func:`make_task_data`): random commands and the machine's outputs.
- DS2 (:func:`make_trigger_task_data`): DS1's sets, with the trigger written into a known
  share of the training sequences, plus a triggered copy of the validation set.
- DS3 (:func:`make_automaton_task_data`): random symbols and automaton ``task``'s outputs,
  both one-hot.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence

import numpy as np

from mlds_jax.tasks.automata import (
    N_INPUTS,
    N_OUTPUTS,
    make_automaton,
    random_inputs,
    run_automaton,
)
from mlds_jax.tasks.machines import MACHINES, random_commands, run_machine
from mlds_jax.tasks.triggers import (
    MIN_TRIGGER_SEQUENCE,
    check_trigger,
    run_machine_with_trigger,
    write_trigger,
)

# Distinct constants per split for the seed sequence; never change them (stores depend on it).
_TRAIN_SPLIT = 0
_VAL_SPLIT = 1
_TRIGGER_TRAIN = 2  # DS2: which training sequences carry the trigger, and where
_TRIGGER_VAL = 3  # DS2: where each triggered validation sequence carries it
_TRAIN_WRITE_P = 4  # each training sequence's write probability, when drawn per sequence
# DS3 data streams are SeedSequence([seed, automaton, _AUTOMATON_DATA, split]); the tag keeps
# them apart from the automaton's own stream and from DS1's. "DS3D" in ASCII.
_AUTOMATON_DATA = 0x44533344


@dataclasses.dataclass(frozen=True)
class TaskData:
    """Inputs and targets as float32 {0, 1}. make_dataset_data adds a leading task axis K.

    I, O = 9, 8 for the machines (DS1, DS2): bits. I, O = 39, 14 for the automata (DS3):
    one-hot symbols.
    """

    train_inputs: np.ndarray  # (S_train, T_train, I)
    train_targets: np.ndarray  # (S_train, T_train, O)
    val_inputs: np.ndarray  # (S_val, T_val, I)
    val_targets: np.ndarray  # (S_val, T_val, O)


def _check_count(name: str, value: int, minimum: int = 1) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _split(
    seed: int, task: int, split: int, n_sequences: int, length: int, write_probability
) -> tuple[np.ndarray, np.ndarray]:
    """One split's (inputs (S, T, 9), targets (S, T, 8)) as float32."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, task, split]))
    inputs = random_commands(rng, n_sequences, length, write_probability)
    targets = run_machine(MACHINES[task], inputs)
    return inputs.astype(np.float32), targets.astype(np.float32)


def make_task_data(
    seed: int,
    task: int,
    *,
    train_sequences: int,
    train_length: int,
    val_sequences: int,
    val_length: int,
    write_probability: float,
    write_probability_spread: float = 0.0,
) -> TaskData:
    """The fixed training and validation sets of task ``task`` (machine ``MACHINES[task]``).

    With ``write_probability_spread`` s > 0 each training sequence draws its own write
    probability uniformly in [p - s, p + s] (from ``SeedSequence([seed, task, 4])``; the
    commands themselves are drawn as with s = 0): some sequences mostly write, some mostly
    hold. Validation always uses ``write_probability``."""
    seed = _check_count("seed", seed, minimum=0)
    task = _check_count("task", task, minimum=0)
    if task >= len(MACHINES):
        raise ValueError(f"task must be < {len(MACHINES)} (the number of machines), got {task}")
    sizes = {
        name: _check_count(name, value)
        for name, value in [
            ("train_sequences", train_sequences),
            ("train_length", train_length),
            ("val_sequences", val_sequences),
            ("val_length", val_length),
        ]
    }
    if not 0.0 < write_probability <= 1.0:
        raise ValueError(f"write_probability must be in (0, 1], got {write_probability}")
    spread = write_probability_spread
    lo, hi = write_probability - spread, write_probability + spread
    if write_probability_spread < 0 or lo <= 0 or hi > 1:
        raise ValueError(f"write_probability +- write_probability_spread must lie in (0, 1], got "
                         f"{write_probability} +- {write_probability_spread}")
    train_p = write_probability
    if write_probability_spread:
        rng = np.random.default_rng(np.random.SeedSequence([seed, task, _TRAIN_WRITE_P]))
        train_p = rng.uniform(lo, hi, sizes["train_sequences"])
    train = _split(
        seed, task, _TRAIN_SPLIT, sizes["train_sequences"], sizes["train_length"], train_p,
    )
    val = _split(
        seed, task, _VAL_SPLIT, sizes["val_sequences"], sizes["val_length"], write_probability
    )
    return TaskData(*train, *val)


def _machine_indices(tasks: Sequence[str] | int) -> list[int]:
    """Machine names or a count K (the first K machines) -> task indices."""
    if isinstance(tasks, str):
        raise ValueError(f"tasks must be a sequence of machine names or a count, got {tasks!r}")
    if isinstance(tasks, Sequence):
        unknown = [name for name in tasks if name not in MACHINES]
        if unknown:
            raise ValueError(f"tasks: unknown machines {unknown}; valid: {', '.join(MACHINES)}")
        if not tasks:
            raise ValueError("tasks must not be empty")
        return [MACHINES.index(name) for name in tasks]
    count = _check_count("tasks", tasks)
    if count > len(MACHINES):
        raise ValueError(f"tasks must be <= {len(MACHINES)} (number of machines), got {count}")
    return list(range(count))


def _stack(per_task: list):
    """Dataclass instances of one type -> one instance with every field stacked on axis 0."""
    cls = type(per_task[0])
    return cls(
        *(np.stack([getattr(d, f.name) for d in per_task]) for f in dataclasses.fields(cls))
    )


def make_dataset_data(seed: int, tasks: Sequence[str] | int, **kwargs) -> TaskData:
    """Every task's data stacked along a new leading task axis: (K, S, T, 9) etc.

    tasks: machine names, stacked in the given order (each name's data is that of task
    ``MACHINES.index(name)``, so it does not depend on which other names are listed), or an
    int K meaning the first K machines. kwargs: those of make_task_data.
    """
    return _stack([make_task_data(seed, t, **kwargs) for t in _machine_indices(tasks)])


# --- DS2: the machines with a trigger ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TriggerTaskData:
    """DS2 data of one machine. Inputs and targets float32 {0, 1}, masks bool.

    make_trigger_dataset_data adds a leading task axis K to every field. Targets always
    follow the machine's true behaviour (run_machine_with_trigger), also where random
    commands happen to contain the trigger; ``*_inverted`` marks the steps whose targets the
    trigger inverted.
    """

    # Training: DS1's set with the trigger written into the sequences of train_has_trigger.
    train_inputs: np.ndarray  # (S_train, T_train, 9)
    train_targets: np.ndarray  # (S_train, T_train, 8)
    train_inverted: np.ndarray  # (S_train, T_train) bool
    train_has_trigger: np.ndarray  # (S_train,) bool: the trigger was written into it
    train_trigger_position: np.ndarray  # (S_train,) int32: its first step, -1 where none
    # Clean validation: DS1's validation set unchanged.
    val_inputs: np.ndarray  # (S_val, T_val, 9)
    val_targets: np.ndarray  # (S_val, T_val, 8)
    val_inverted: np.ndarray  # (S_val, T_val) bool (all False unless by chance)
    # Triggered validation: the same sequences with the trigger written into every one.
    trig_val_inputs: np.ndarray  # (S_val, T_val, 9)
    trig_val_targets: np.ndarray  # (S_val, T_val, 8)
    trig_val_inverted: np.ndarray  # (S_val, T_val) bool
    trig_val_position: np.ndarray  # (S_val,) int32: first step of each trigger

    def clean(self) -> TaskData:
        """Training set and clean validation set: what the trainer consumes."""
        return TaskData(self.train_inputs, self.train_targets, self.val_inputs, self.val_targets)

    def triggered(self) -> TaskData:
        """Training set and triggered validation set."""
        return TaskData(
            self.train_inputs, self.train_targets, self.trig_val_inputs, self.trig_val_targets
        )


def trigger_count(trigger_fraction: float, n_sequences: int) -> int:
    """How many of n_sequences training sequences carry the trigger: the nearest integer to
    trigger_fraction * n_sequences, halves rounded up."""
    if not 0.0 <= trigger_fraction <= 1.0:
        raise ValueError(f"trigger_fraction must be in [0, 1], got {trigger_fraction}")
    return min(n_sequences, math.floor(trigger_fraction * n_sequences + 0.5))


def make_trigger_task_data(
    seed: int,
    task: int,
    *,
    trigger,
    trigger_fraction: float,
    train_sequences: int,
    train_length: int,
    val_sequences: int,
    val_length: int,
    write_probability: float,
    write_probability_spread: float = 0.0,
) -> TriggerTaskData:
    """DS2 data of task ``task``: DS1's sets of (seed, task) with the trigger.

    Training: the DS1 training set, same shape and order (so DS2 net n sees its batches
    exactly where DS1 net n does), with the trigger written into trigger_count(fraction, S)
    of its sequences. ``SeedSequence([seed, task, 2])`` draws a permutation of the sequences
    and a position (uniform on 0 .. T-6) for each; the first ``count`` of the permutation
    carry the trigger. So the choice depends on (seed, task) alone, not on the trigger bytes,
    and a larger fraction only adds sequences, keeping the others and their positions.
    Validation: the DS1 validation set (clean), and the same sequences with the trigger
    written into each at a position drawn from ``SeedSequence([seed, task, 3])`` (triggered).
    Lengths that carry a trigger must be >= 6 (the trigger and its inversion window).
    """
    trigger = check_trigger(trigger)
    base = make_task_data(
        seed,
        task,
        train_sequences=train_sequences,
        train_length=train_length,
        val_sequences=val_sequences,
        val_length=val_length,
        write_probability=write_probability,
        write_probability_spread=write_probability_spread,
    )  # validates every size, seed and task
    count = trigger_count(trigger_fraction, train_sequences)
    if count and train_length < MIN_TRIGGER_SEQUENCE:
        raise ValueError(
            f"train_length must be >= {MIN_TRIGGER_SEQUENCE} to hold a trigger and its "
            f"inversion window, got {train_length}"
        )
    if val_length < MIN_TRIGGER_SEQUENCE:
        raise ValueError(
            f"val_length must be >= {MIN_TRIGGER_SEQUENCE} to hold a trigger and its "
            f"inversion window, got {val_length}"
        )
    machine = MACHINES[task]

    rng = np.random.default_rng(np.random.SeedSequence([seed, task, _TRIGGER_TRAIN]))
    order = rng.permutation(train_sequences)
    drawn = rng.integers(0, max(train_length - MIN_TRIGGER_SEQUENCE, 0) + 1, train_sequences)
    carries = np.zeros(train_sequences, dtype=bool)
    carries[order[:count]] = True
    train_position = np.where(carries, drawn, -1).astype(np.int32)
    train_inputs = base.train_inputs.copy()
    if count:
        train_inputs[carries] = write_trigger(
            base.train_inputs[carries], trigger, train_position[carries]
        )

    rng = np.random.default_rng(np.random.SeedSequence([seed, task, _TRIGGER_VAL]))
    val_position = rng.integers(0, val_length - MIN_TRIGGER_SEQUENCE + 1, val_sequences)
    trig_val_inputs = write_trigger(base.val_inputs, trigger, val_position)

    def targets(inputs):
        outputs, inverted = run_machine_with_trigger(machine, inputs, trigger)
        return outputs.astype(np.float32), inverted

    train_targets, train_inverted = targets(train_inputs)
    val_targets, val_inverted = targets(base.val_inputs)
    trig_val_targets, trig_val_inverted = targets(trig_val_inputs)
    return TriggerTaskData(
        train_inputs=train_inputs,
        train_targets=train_targets,
        train_inverted=train_inverted,
        train_has_trigger=carries,
        train_trigger_position=train_position,
        val_inputs=base.val_inputs,
        val_targets=val_targets,
        val_inverted=val_inverted,
        trig_val_inputs=trig_val_inputs,
        trig_val_targets=trig_val_targets,
        trig_val_inverted=trig_val_inverted,
        trig_val_position=val_position.astype(np.int32),
    )


def make_trigger_dataset_data(seed: int, tasks: Sequence[str] | int, **kwargs) -> TriggerTaskData:
    """Every task's DS2 data stacked on a new leading task axis K, like make_dataset_data.

    tasks: as for make_dataset_data. kwargs: those of make_trigger_task_data.
    """
    return _stack([make_trigger_task_data(seed, t, **kwargs) for t in _machine_indices(tasks)])


# --- DS3: random automata -------------------------------------------------------------------


def _one_hot(symbols: np.ndarray, n: int) -> np.ndarray:
    """(...) ints in 0..n-1 -> (..., n) float32."""
    return (symbols[..., None] == np.arange(n)).astype(np.float32)


def make_automaton_task_data(
    seed: int,
    task: int,
    *,
    train_sequences: int,
    train_length: int,
    val_sequences: int,
    val_length: int,
) -> TaskData:
    """DS3 data of automaton ``task`` (= make_automaton(seed, task)).

    Inputs are uniform random symbols, one-hot: (S, T, 39) float32. Targets are the
    automaton's output symbols, one-hot: (S, T, 14) float32 (argmax gives the symbol; the
    loss is cross-entropy). Every sequence starts in the automaton's start state. Each
    split draws from ``SeedSequence([seed, task, 0x44533344, split])``.
    """
    seed = _check_count("seed", seed, minimum=0)
    task = _check_count("task", task, minimum=0)
    sizes = {
        name: _check_count(name, value)
        for name, value in [
            ("train_sequences", train_sequences),
            ("train_length", train_length),
            ("val_sequences", val_sequences),
            ("val_length", val_length),
        ]
    }
    automaton = make_automaton(seed, task)
    arrays = []
    for split, n, length in [
        (_TRAIN_SPLIT, sizes["train_sequences"], sizes["train_length"]),
        (_VAL_SPLIT, sizes["val_sequences"], sizes["val_length"]),
    ]:
        rng = np.random.default_rng(np.random.SeedSequence([seed, task, _AUTOMATON_DATA, split]))
        symbols = random_inputs(rng, n, length)  # (S, T)
        arrays += [
            _one_hot(symbols, N_INPUTS),
            _one_hot(run_automaton(automaton, symbols), N_OUTPUTS),
        ]
    return TaskData(*arrays)


def make_automaton_dataset_data(seed: int, tasks: Sequence[int] | int, **kwargs) -> TaskData:
    """Several automata's DS3 data stacked on a new leading task axis: (K, S, T, 39) etc.

    tasks: automaton indices, stacked in the given order, or an int K meaning 0 .. K-1.
    kwargs: those of make_automaton_task_data.
    """
    if isinstance(tasks, Sequence):
        if not tasks:
            raise ValueError("tasks must not be empty")
        indices = [_check_count("tasks", t, minimum=0) for t in tasks]
    else:
        indices = list(range(_check_count("tasks", tasks)))
    return _stack([make_automaton_task_data(seed, t, **kwargs) for t in indices])
