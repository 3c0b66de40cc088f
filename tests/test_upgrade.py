"""A store written before a recipe value existed is resumed and extended by the version that
added it, as if that version had made it; killed half way, the upgrade is finished by the
next run; and a store that differs in more than the added values is still refused.

The older store is made here the way an older version wrote it: the newest recipe values
(the last columns of `hyperparameters`, the last keys of SWEEPABLE) taken out of its config
and its hyperparameters array."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr

import mlds_jax
from mlds_jax.config.sections import SWEEPABLE
from mlds_jax.store import upgrade
from mlds_jax.store.schema import WIDENING

ADDED = SWEEPABLE[-2:]  # the recipe values added last (round 9)
ARRAYS = ("weights", "initial_weights", "task", "status", "epochs", "loss_curve",
          "val_accuracy", "hyperparameters", "seq_steps")


def generate(cwd, out, per_task, *args):
    return subprocess.run([sys.executable, "-m", "mlds_jax.cli", "generate", "smoke", "--out",
                           out, "--per-task", str(per_task), "--no-progress", *args],
                          capture_output=True, text=True, timeout=900, cwd=cwd)


def arrays(path):
    ds = mlds_jax.open_dataset(path)
    return {name: np.asarray(ds.store.read_array(name)) for name in ARRAYS}


def as_older_version(path):
    """Rewrite the store at `path` as the version before ADDED wrote it."""
    group = zarr.open_group(path, mode="r+", zarr_format=3)
    attrs = dict(group.attrs)
    assert list(attrs["hyperparameter_names"][-len(ADDED):]) == list(ADDED)
    for name in ADDED:
        del attrs["config"]["recipe"][name]
    attrs["hyperparameter_names"] = list(attrs["hyperparameter_names"][:-len(ADDED)])
    hyper = group["hyperparameters"]
    kept = hyper[:, :-len(ADDED)]
    hyper.resize((hyper.shape[0], kept.shape[1]))
    hyper[:] = kept
    group.attrs.put(attrs)
    return attrs


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A DS1 smoke store of 1 net per machine, and the reference of 2 per machine made fresh
    by this version (run from the directory, relative paths, as users do)."""
    root = tmp_path_factory.mktemp("upgrade")
    for out, per_task in (("one.zarr", 1), ("two.zarr", 2)):
        done = generate(root, out, per_task)
        assert done.returncode == 0, done.stderr
    return root


def test_older_store_is_extended_as_if_this_version_had_made_it(made, tmp_path):
    shutil.copytree(made / "one.zarr", tmp_path / "old.zarr")
    before = arrays(tmp_path / "old.zarr")
    as_older_version(tmp_path / "old.zarr")
    done = generate(tmp_path, "old.zarr", 2)
    assert done.returncode == 0, done.stderr
    assert "(5 trained now" in done.stdout  # the 5 stored nets kept, 5 more trained
    got, want = arrays(tmp_path / "old.zarr"), arrays(made / "two.zarr")
    for name in ARRAYS:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for name in ARRAYS:
        np.testing.assert_array_equal(got[name][:5], before[name][:5], err_msg=name)
    attrs = dict(zarr.open_group(tmp_path / "old.zarr", mode="r").attrs)
    assert WIDENING not in attrs and attrs["hyperparameter_names"] == list(SWEEPABLE)
    assert attrs["config"] == mlds_jax.open_dataset(made / "two.zarr").config
    check = subprocess.run([sys.executable, "-m", "mlds_jax.cli", "verify", "old.zarr"],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr


def test_upgrade_killed_half_way_is_finished_by_the_next_run(made, tmp_path):
    """Killed after its first two writes (the record in attrs, the array widened, its new
    columns not written yet): the store still opens for reading with its old columns, and
    the next run finishes the upgrade without training anything."""
    shutil.copytree(made / "one.zarr", tmp_path / "old.zarr")
    older = as_older_version(tmp_path / "old.zarr")
    new_attrs = dict(zarr.open_group(made / "one.zarr", mode="r").attrs)
    record = upgrade.widening(older, new_attrs, {f"recipe.{n}": 0.0 for n in ADDED},
                              {n: 0.0 for n in ADDED})
    assert sorted(record["added_keys"]) == sorted(f"recipe.{n}" for n in ADDED)
    group = zarr.open_group(tmp_path / "old.zarr", mode="r+", zarr_format=3)
    group.attrs.update({WIDENING: record})
    hyper = group["hyperparameters"]
    hyper.resize((hyper.shape[0], len(SWEEPABLE)))
    ds = mlds_jax.open_dataset(tmp_path / "old.zarr")  # reads while half done
    assert ds.config["recipe"].keys() == older["config"]["recipe"].keys()
    done = generate(tmp_path, "old.zarr", 1)
    assert done.returncode == 0, done.stderr
    assert "(0 trained now" in done.stdout
    got, want = arrays(tmp_path / "old.zarr"), arrays(made / "one.zarr")
    for name in ARRAYS:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    attrs = dict(zarr.open_group(tmp_path / "old.zarr", mode="r").attrs)
    assert WIDENING not in attrs and attrs["hyperparameter_names"] == list(SWEEPABLE)


def test_older_store_is_refused_where_an_added_value_is_not_its_default(made, tmp_path):
    shutil.copytree(made / "one.zarr", tmp_path / "old.zarr")
    older = as_older_version(tmp_path / "old.zarr")
    name = ADDED[0]
    done = generate(tmp_path, "old.zarr", 1, "--set", f"recipe.{name}=0.5")
    assert done.returncode == 1
    assert f"recipe.{name}" in done.stderr and "--overwrite" in done.stderr
    attrs = dict(zarr.open_group(tmp_path / "old.zarr", mode="r").attrs)
    assert attrs == older  # untouched
    assert zarr.open_group(tmp_path / "old.zarr", mode="r")["hyperparameters"].shape[1] == len(
        SWEEPABLE) - len(ADDED)
