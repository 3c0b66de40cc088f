"""A task's fixed training and validation sets, derived from (dataset seed, task) alone.

Each split draws from its own ``SeedSequence([seed, task, split])``, so the two sets are
independent and resizing one never changes the other. Task index ``t`` is ``MACHINES[t]``.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence

import numpy as np

from mlds_jax.tasks.machines import MACHINES, random_commands, run_machine

# Distinct constants per split for the seed sequence; never change them (stores depend on it).
_TRAIN_SPLIT = 0
_VAL_SPLIT = 1


@dataclasses.dataclass(frozen=True)
class TaskData:
    """Inputs and targets as float32 {0, 1}. make_dataset_data adds a leading task axis K."""

    train_inputs: np.ndarray  # (S_train, T_train, 9)
    train_targets: np.ndarray  # (S_train, T_train, 8)
    val_inputs: np.ndarray  # (S_val, T_val, 9)
    val_targets: np.ndarray  # (S_val, T_val, 8)


def _check_count(name: str, value: int, minimum: int = 1) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _split(
    seed: int, task: int, split: int, n_sequences: int, length: int, write_probability: float
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
) -> TaskData:
    """The fixed training and validation sets of task ``task`` (machine ``MACHINES[task]``)."""
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
    train = _split(
        seed, task, _TRAIN_SPLIT, sizes["train_sequences"], sizes["train_length"],
        write_probability,
    )
    val = _split(
        seed, task, _VAL_SPLIT, sizes["val_sequences"], sizes["val_length"], write_probability
    )
    return TaskData(*train, *val)


def make_dataset_data(seed: int, tasks: Sequence[str] | int, **kwargs) -> TaskData:
    """Every task's data stacked along a new leading task axis: (K, S, T, 9) etc.

    tasks: machine names, stacked in the given order (each name's data is that of task
    ``MACHINES.index(name)``, so it does not depend on which other names are listed), or an
    int K meaning the first K machines. kwargs: those of make_task_data.
    """
    if isinstance(tasks, str):
        raise ValueError(f"tasks must be a sequence of machine names or a count, got {tasks!r}")
    if isinstance(tasks, Sequence):
        unknown = [name for name in tasks if name not in MACHINES]
        if unknown:
            raise ValueError(f"tasks: unknown machines {unknown}; valid: {', '.join(MACHINES)}")
        if not tasks:
            raise ValueError("tasks must not be empty")
        indices = [MACHINES.index(name) for name in tasks]
    else:
        count = _check_count("tasks", tasks)
        if count > len(MACHINES):
            raise ValueError(f"tasks must be <= {len(MACHINES)} (number of machines), got {count}")
        indices = list(range(count))
    per_task = [make_task_data(seed, t, **kwargs) for t in indices]
    return TaskData(
        *(
            np.stack([getattr(d, f.name) for d in per_task])
            for f in dataclasses.fields(TaskData)
        )
    )
