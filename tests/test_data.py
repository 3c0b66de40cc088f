"""A task's fixed training and validation sets."""

import dataclasses

import numpy as np
import pytest

from mlds_jax.data import TaskData, make_dataset_data, make_task_data
from mlds_jax.tasks.machines import MACHINES, run_machine

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
