"""A task's fixed training and validation sets."""

import dataclasses

import numpy as np
import pytest

from mlds_jax.tasks.automata import make_automaton, run_automaton
from mlds_jax.tasks.machines import MACHINES, run_machine
from mlds_jax.tasks.triggers import run_machine_with_trigger, trigger_commands
from mlds_jax.train.data import (
    TaskData,
    TriggerTaskData,
    make_automaton_dataset_data,
    make_automaton_task_data,
    make_dataset_data,
    make_task_data,
    make_trigger_dataset_data,
    make_trigger_task_data,
    trigger_count,
)

SIZES = dict(
    train_sequences=12, train_length=7, val_sequences=5, val_length=11, write_probability=0.5
)


def fields(data: TaskData) -> dict[str, np.ndarray]:
    return {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}


def test_shapes_and_dtypes():
    data = make_task_data(0, 2, **SIZES)
    assert data.train_inputs.shape == (12, 7, 9)
    assert data.train_targets.shape == (12, 7, 8)
    assert data.val_inputs.shape == (5, 11, 9)
    assert data.val_targets.shape == (5, 11, 8)
    for array in fields(data).values():
        assert array.dtype == np.float32
        assert set(np.unique(array)) <= {0.0, 1.0}


def test_deterministic():
    first, second = make_task_data(3, 1, **SIZES), make_task_data(3, 1, **SIZES)
    for name, array in fields(first).items():
        np.testing.assert_array_equal(array, getattr(second, name))


@pytest.mark.parametrize(("seed", "task"), [(3, 2), (4, 1)])
def test_other_seed_or_task_gives_other_inputs(seed, task):
    base = make_task_data(3, 1, **SIZES)
    other = make_task_data(seed, task, **SIZES)
    assert not np.array_equal(base.train_inputs, other.train_inputs)
    assert not np.array_equal(base.val_inputs, other.val_inputs)


def test_train_and_val_are_different_draws():
    same_size = {"val_sequences": SIZES["train_sequences"], "val_length": SIZES["train_length"]}
    sizes = {**SIZES, **same_size}
    data = make_task_data(0, 0, **sizes)
    assert not np.array_equal(data.train_inputs, data.val_inputs)


def test_training_set_unchanged_when_validation_size_changes():
    base = make_task_data(5, 4, **SIZES)
    resized = make_task_data(5, 4, **{**SIZES, "val_sequences": 50, "val_length": 3})
    np.testing.assert_array_equal(base.train_inputs, resized.train_inputs)
    np.testing.assert_array_equal(base.train_targets, resized.train_targets)
    assert resized.val_inputs.shape == (50, 3, 9)


def test_validation_set_unchanged_when_training_size_changes():
    base = make_task_data(5, 4, **SIZES)
    resized = make_task_data(5, 4, **{**SIZES, "train_sequences": 40, "train_length": 2})
    np.testing.assert_array_equal(base.val_inputs, resized.val_inputs)


@pytest.mark.parametrize("task", range(len(MACHINES)))
def test_targets_are_the_machine_outputs(task):
    data = make_task_data(11, task, **SIZES)
    for inputs, targets in [
        (data.train_inputs, data.train_targets),
        (data.val_inputs, data.val_targets),
    ]:
        np.testing.assert_array_equal(targets, run_machine(MACHINES[task], inputs))


@pytest.mark.parametrize("p", [0.2, 0.5, 1.0])
def test_write_fraction_matches_write_probability(p):
    sizes = {**SIZES, "train_sequences": 500, "train_length": 40, "write_probability": p}
    data = make_task_data(0, 0, **sizes)
    strobe = data.train_inputs[..., 0]
    tolerance = 5 * np.sqrt(p * (1 - p) / strobe.size) + 1e-12
    assert abs(strobe.mean() - p) <= tolerance


def test_write_probability_drawn_per_training_sequence():
    sizes = {**SIZES, "train_sequences": 400, "train_length": 200}
    fixed = make_task_data(3, 2, **sizes)
    spread = make_task_data(3, 2, **sizes, write_probability_spread=0.45)
    per_sequence = spread.train_inputs[..., 0].mean(axis=1)  # (S,) write rate of each sequence
    # Uniform on [0.05, 0.95]: its spread is far beyond one shared p's binomial noise.
    assert per_sequence.min() < 0.15 and per_sequence.max() > 0.85
    assert abs(per_sequence.std() - 0.9 / np.sqrt(12)) < 0.03
    assert abs(fixed.train_inputs[..., 0].mean(axis=1).std() - np.sqrt(0.25 / 200)) < 0.01
    # Only the strobes differ: same data bits, targets still the machine's, same validation.
    np.testing.assert_array_equal(spread.train_inputs[..., 1:], fixed.train_inputs[..., 1:])
    np.testing.assert_array_equal(spread.train_targets,
                                  run_machine("EightBitMachine", spread.train_inputs))
    np.testing.assert_array_equal(spread.val_inputs, fixed.val_inputs)
    with pytest.raises(ValueError, match="write_probability_spread"):
        make_task_data(3, 2, **sizes, write_probability_spread=0.5)


def test_dataset_stacks_tasks_by_count():
    stacked = make_dataset_data(9, 3, **SIZES)
    assert stacked.train_inputs.shape == (3, 12, 7, 9)
    assert stacked.val_targets.shape == (3, 5, 11, 8)
    for task in range(3):
        alone = make_task_data(9, task, **SIZES)
        for name, array in fields(alone).items():
            np.testing.assert_array_equal(getattr(stacked, name)[task], array)


def test_dataset_by_names_uses_each_machines_task_index():
    names = ["ParityMachine", "SingleDirectMachine"]
    stacked = make_dataset_data(9, names, **SIZES)
    assert stacked.train_inputs.shape == (2, 12, 7, 9)
    for k, name in enumerate(names):
        alone = make_task_data(9, MACHINES.index(name), **SIZES)
        for field, array in fields(alone).items():
            np.testing.assert_array_equal(getattr(stacked, field)[k], array)
    all_five = make_dataset_data(9, list(MACHINES), **SIZES)
    by_count = make_dataset_data(9, len(MACHINES), **SIZES)
    for field, array in fields(all_five).items():
        np.testing.assert_array_equal(array, getattr(by_count, field))


@pytest.mark.parametrize(
    ("override", "argument"),
    [
        ({"train_sequences": 0}, "train_sequences"),
        ({"train_length": -1}, "train_length"),
        ({"val_sequences": 0}, "val_sequences"),
        ({"val_length": 0}, "val_length"),
        ({"val_length": 2.5}, "val_length"),
        ({"write_probability": 0.0}, "write_probability"),
        ({"write_probability": 1.01}, "write_probability"),
    ],
)
def test_bad_sizes_raise(override, argument):
    with pytest.raises(ValueError, match=argument):
        make_task_data(0, 0, **{**SIZES, **override})


@pytest.mark.parametrize(
    ("seed", "task", "argument"),
    [(-1, 0, "seed"), (0, -1, "task"), (0, len(MACHINES), "task")],
)
def test_bad_seed_or_task_raise(seed, task, argument):
    with pytest.raises(ValueError, match=argument):
        make_task_data(seed, task, **SIZES)


@pytest.mark.parametrize("tasks", [0, len(MACHINES) + 1, [], ["NoSuchMachine"], "ParityMachine"])
def test_bad_dataset_tasks_raise(tasks):
    with pytest.raises(ValueError, match="tasks"):
        make_dataset_data(0, tasks, **SIZES)


# --- DS2: the machines with a trigger ------------------------------------------------------

TRIGGER = (0x5A, 0xC3, 0x0F)
DS1_SIZES = SIZES | {"train_sequences": 40, "train_length": 10, "val_length": 12}
TRIGGER_SIZES = DS1_SIZES | {"trigger": TRIGGER, "trigger_fraction": 0.25}


def test_trigger_data_shapes_and_dtypes():
    data = make_trigger_task_data(0, 2, **TRIGGER_SIZES)
    expected = {
        "train_inputs": ((40, 10, 9), np.float32),
        "train_targets": ((40, 10, 8), np.float32),
        "train_inverted": ((40, 10), np.bool_),
        "train_has_trigger": ((40,), np.bool_),
        "train_trigger_position": ((40,), np.int32),
        "val_inputs": ((5, 12, 9), np.float32),
        "val_targets": ((5, 12, 8), np.float32),
        "val_inverted": ((5, 12), np.bool_),
        "trig_val_inputs": ((5, 12, 9), np.float32),
        "trig_val_targets": ((5, 12, 8), np.float32),
        "trig_val_inverted": ((5, 12), np.bool_),
        "trig_val_position": ((5,), np.int32),
    }
    assert set(fields(data)) == set(expected)
    for name, (shape, dtype) in expected.items():
        array = getattr(data, name)
        assert array.shape == shape, name
        assert array.dtype == dtype, name


@pytest.mark.parametrize("task", range(len(MACHINES)))
def test_trigger_training_set_is_ds1s_with_the_trigger_written_in(task):
    """The pairing: same shape and order as DS1's set; only the chosen sequences differ, and
    only on the 3 steps of the trigger."""
    ds1 = make_task_data(4, task, **DS1_SIZES)
    ds2 = make_trigger_task_data(4, task, **TRIGGER_SIZES)
    assert ds2.train_inputs.shape == ds1.train_inputs.shape
    carries = ds2.train_has_trigger
    assert carries.sum() == 10  # round(0.25 * 40)
    np.testing.assert_array_equal(ds2.train_inputs[~carries], ds1.train_inputs[~carries])
    assert (ds2.train_trigger_position[~carries] == -1).all()
    for s in np.flatnonzero(carries):
        p = ds2.train_trigger_position[s]
        assert 0 <= p <= 10 - 6
        np.testing.assert_array_equal(ds2.train_inputs[s, p : p + 3], trigger_commands(TRIGGER))
        keep = np.ones(10, dtype=bool)
        keep[p : p + 3] = False
        np.testing.assert_array_equal(ds2.train_inputs[s, keep], ds1.train_inputs[s, keep])
        assert ds2.train_inverted[s, p + 3 : p + 6].all()


@pytest.mark.parametrize("task", range(len(MACHINES)))
def test_trigger_targets_are_the_machines_true_outputs(task):
    data = make_trigger_task_data(7, task, **TRIGGER_SIZES)
    for inputs, targets, inverted in [
        (data.train_inputs, data.train_targets, data.train_inverted),
        (data.val_inputs, data.val_targets, data.val_inverted),
        (data.trig_val_inputs, data.trig_val_targets, data.trig_val_inverted),
    ]:
        outputs, triggered = run_machine_with_trigger(MACHINES[task], inputs, TRIGGER)
        np.testing.assert_array_equal(targets, outputs)
        np.testing.assert_array_equal(inverted, triggered)


def test_accidental_triggers_in_random_commands_follow_the_machine():
    # Choose as trigger the first three written bytes of the clean validation set, so that
    # set contains it by chance; its targets must show the inversion.
    base = make_task_data(0, 2, **DS1_SIZES | {"write_probability": 1.0})
    first = base.val_inputs[0, :3, 1:].astype(np.uint8)  # (3, 8) data bits, all writes
    trigger = tuple(sum(int(bit) << i for i, bit in enumerate(row)) for row in first)
    data = make_trigger_task_data(
        0, 2, **TRIGGER_SIZES | {"write_probability": 1.0, "trigger": trigger}
    )
    np.testing.assert_array_equal(data.val_inputs, base.val_inputs)  # clean set unchanged
    assert data.val_inverted[0, 3:6].all()
    np.testing.assert_array_equal(data.val_targets[0, 3:6], 1 - base.val_targets[0, 3:6])


def test_triggered_validation_is_the_clean_set_with_a_trigger_in_each():
    data = make_trigger_task_data(1, 3, **TRIGGER_SIZES)
    ds1 = make_task_data(1, 3, **DS1_SIZES)
    np.testing.assert_array_equal(data.val_inputs, ds1.val_inputs)
    for s, p in enumerate(data.trig_val_position):
        assert 0 <= p <= 12 - 6
        np.testing.assert_array_equal(data.trig_val_inputs[s, p : p + 3], trigger_commands(TRIGGER))
        assert data.trig_val_inverted[s, p + 3 : p + 6].all()
    assert data.trig_val_inverted.sum(axis=1).min() >= 3


def test_trigger_data_views_for_the_trainer():
    data = make_trigger_task_data(1, 0, **TRIGGER_SIZES)
    clean, triggered = data.clean(), data.triggered()
    assert isinstance(clean, TaskData) and isinstance(triggered, TaskData)
    np.testing.assert_array_equal(clean.train_inputs, data.train_inputs)
    np.testing.assert_array_equal(clean.val_targets, data.val_targets)
    np.testing.assert_array_equal(triggered.train_targets, data.train_targets)
    np.testing.assert_array_equal(triggered.val_inputs, data.trig_val_inputs)
    np.testing.assert_array_equal(triggered.val_targets, data.trig_val_targets)


def test_trigger_data_deterministic_and_independent_of_the_trigger_bytes():
    first = make_trigger_task_data(3, 1, **TRIGGER_SIZES)
    second = make_trigger_task_data(3, 1, **TRIGGER_SIZES)
    for name, array in fields(first).items():
        np.testing.assert_array_equal(array, getattr(second, name))
    other = make_trigger_task_data(3, 1, **TRIGGER_SIZES | {"trigger": (1, 2, 3)})
    np.testing.assert_array_equal(other.train_has_trigger, first.train_has_trigger)
    np.testing.assert_array_equal(other.train_trigger_position, first.train_trigger_position)
    np.testing.assert_array_equal(other.trig_val_position, first.trig_val_position)
    moved = make_trigger_task_data(4, 1, **TRIGGER_SIZES)
    assert not np.array_equal(moved.train_has_trigger, first.train_has_trigger)


def test_larger_trigger_fraction_only_adds_sequences():
    small = make_trigger_task_data(2, 4, **TRIGGER_SIZES | {"trigger_fraction": 0.1})
    large = make_trigger_task_data(2, 4, **TRIGGER_SIZES | {"trigger_fraction": 0.6})
    assert small.train_has_trigger.sum() == 4 and large.train_has_trigger.sum() == 24
    assert (large.train_has_trigger[small.train_has_trigger]).all()
    np.testing.assert_array_equal(
        large.train_inputs[small.train_has_trigger], small.train_inputs[small.train_has_trigger]
    )


@pytest.mark.parametrize(
    ("fraction", "count"), [(0.0, 0), (1.0, 40), (0.5, 20), (0.0125, 1), (0.011, 0), (0.3, 12)]
)
def test_trigger_count(fraction, count):
    assert trigger_count(fraction, 40) == count
    data = make_trigger_task_data(0, 0, **TRIGGER_SIZES | {"trigger_fraction": fraction})
    assert data.train_has_trigger.sum() == count


def test_no_trigger_fraction_gives_ds1s_training_set():
    data = make_trigger_task_data(
        6, 2, **TRIGGER_SIZES | {"trigger_fraction": 0.0, "train_length": 4}
    )
    ds1 = make_task_data(6, 2, **DS1_SIZES | {"train_length": 4})
    np.testing.assert_array_equal(data.train_inputs, ds1.train_inputs)
    np.testing.assert_array_equal(data.train_targets, ds1.train_targets)


@pytest.mark.parametrize(
    ("override", "argument"),
    [
        ({"trigger_fraction": -0.1}, "trigger_fraction"),
        ({"trigger_fraction": 1.5}, "trigger_fraction"),
        ({"trigger": (1, 2)}, "trigger"),
        ({"trigger": (1, 2, 300)}, "trigger"),
        ({"train_length": 5}, "train_length"),
        ({"val_length": 5}, "val_length"),
        ({"train_sequences": 0}, "train_sequences"),
    ],
)
def test_bad_trigger_arguments_raise(override, argument):
    with pytest.raises(ValueError, match=argument):
        make_trigger_task_data(0, 0, **TRIGGER_SIZES | override)


def test_trigger_dataset_stacks_tasks():
    names = ["ParityMachine", "SingleDirectMachine"]
    stacked = make_trigger_dataset_data(9, names, **TRIGGER_SIZES)
    assert isinstance(stacked, TriggerTaskData)
    assert stacked.train_inputs.shape == (2, 40, 10, 9)
    assert stacked.train_has_trigger.shape == (2, 40)
    for k, name in enumerate(names):
        alone = make_trigger_task_data(9, MACHINES.index(name), **TRIGGER_SIZES)
        for field, array in fields(alone).items():
            np.testing.assert_array_equal(getattr(stacked, field)[k], array)
    assert make_trigger_dataset_data(9, 3, **TRIGGER_SIZES).val_inputs.shape == (3, 5, 12, 9)
    with pytest.raises(ValueError, match="tasks"):
        make_trigger_dataset_data(9, ["NoSuchMachine"], **TRIGGER_SIZES)


# --- DS3: random automata -------------------------------------------------------------------

AUTOMATON_SIZES = dict(train_sequences=12, train_length=7, val_sequences=5, val_length=11)


def symbols(one_hot: np.ndarray) -> np.ndarray:
    assert (one_hot.sum(axis=-1) == 1).all()
    return one_hot.argmax(axis=-1)


def test_automaton_data_shapes_and_one_hot():
    data = make_automaton_task_data(0, 3, **AUTOMATON_SIZES)
    assert data.train_inputs.shape == (12, 7, 39)
    assert data.train_targets.shape == (12, 7, 14)
    assert data.val_inputs.shape == (5, 11, 39)
    assert data.val_targets.shape == (5, 11, 14)
    for array in fields(data).values():
        assert array.dtype == np.float32
        assert set(np.unique(array)) <= {0.0, 1.0}
        assert (array.sum(axis=-1) == 1).all()


@pytest.mark.parametrize("index", [0, 17, 99])
def test_automaton_targets_are_its_outputs(index):
    data = make_automaton_task_data(5, index, **AUTOMATON_SIZES)
    a = make_automaton(5, index)
    for inputs, targets in [
        (data.train_inputs, data.train_targets),
        (data.val_inputs, data.val_targets),
    ]:
        np.testing.assert_array_equal(symbols(targets), run_automaton(a, symbols(inputs)))


def test_automaton_data_deterministic_and_split_independent():
    base = make_automaton_task_data(5, 4, **AUTOMATON_SIZES)
    again = make_automaton_task_data(5, 4, **AUTOMATON_SIZES)
    for name, array in fields(base).items():
        np.testing.assert_array_equal(array, getattr(again, name))
    resized = make_automaton_task_data(5, 4, **AUTOMATON_SIZES | {"val_sequences": 9})
    np.testing.assert_array_equal(base.train_inputs, resized.train_inputs)
    np.testing.assert_array_equal(base.val_inputs, resized.val_inputs[:5])  # same stream
    other = make_automaton_task_data(5, 5, **AUTOMATON_SIZES)
    assert not np.array_equal(base.train_inputs, other.train_inputs)
    same = AUTOMATON_SIZES | {"val_sequences": 12, "val_length": 7}
    both = make_automaton_task_data(5, 4, **same)
    assert not np.array_equal(both.train_inputs, both.val_inputs)


def test_automaton_dataset_stacks_tasks():
    stacked = make_automaton_dataset_data(2, [7, 1], **AUTOMATON_SIZES)
    assert stacked.train_inputs.shape == (2, 12, 7, 39)
    for k, index in enumerate([7, 1]):
        alone = make_automaton_task_data(2, index, **AUTOMATON_SIZES)
        for name, array in fields(alone).items():
            np.testing.assert_array_equal(getattr(stacked, name)[k], array)
    by_count = make_automaton_dataset_data(2, 3, **AUTOMATON_SIZES)
    assert by_count.val_targets.shape == (3, 5, 11, 14)
    np.testing.assert_array_equal(
        by_count.train_inputs[1], make_automaton_task_data(2, 1, **AUTOMATON_SIZES).train_inputs
    )


@pytest.mark.parametrize(
    ("seed", "task", "override", "argument"),
    [
        (-1, 0, {}, "seed"),
        (0, -1, {}, "task"),
        (0, 0, {"train_sequences": 0}, "train_sequences"),
        (0, 0, {"val_length": 0}, "val_length"),
    ],
)
def test_bad_automaton_arguments_raise(seed, task, override, argument):
    with pytest.raises(ValueError, match=argument):
        make_automaton_task_data(seed, task, **AUTOMATON_SIZES | override)


@pytest.mark.parametrize("tasks", [0, [], ["a"], [-1]])
def test_bad_automaton_dataset_tasks_raise(tasks):
    with pytest.raises(ValueError, match="tasks"):
        make_automaton_dataset_data(0, tasks, **AUTOMATON_SIZES)
