"""The population split over several devices trains the same nets as one device.

Two CPU devices are faked (`--xla_force_host_platform_device_count=2`), which must be set
before JAX starts, so the runs happen in a fresh process that saves what it saw."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from mlds_jax.train import population, step

N_NETS = 5  # odd: 3 slots are rounded up to 4 on two devices, 4 -> 2 when compacted
# The smoke config with test_train's tiny recipe: nets stop at different checks (threshold
# 0.47 on the worst pin), so slots are refilled and the population compacted mid-run.
OVERRIDES = ["recipe.train_sequences=64", "recipe.train_length=12", "recipe.val_sequences=32",
             "recipe.val_length=24", "recipe.max_epochs=6", "recipe.threshold=0.47",
             "run.val_batch=16"]

SCRIPT = """
import sys
import jax
import numpy as np
from mlds_jax.train import population
from mlds_jax.config.load import load_config
from mlds_jax.generate import task_data

jax.config.update("jax_numpy_rank_promotion", "raise")
out, n_nets, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
cfg = load_config("smoke", overrides)
data = task_data(cfg)
saved = {}
# One device, one slot (a single compile); then both devices, 3 slots asked for.
for name, devices, slots in (("one", jax.local_devices()[:1], 1), ("two", jax.local_devices(), 3)):
    pop = population.Population(cfg, data, slots, devices=devices)
    step, rows = pop._step, []

    def spy(state, new_ids, *rest, step=step, rows=rows):  # rest: per-net arrays, data
        state = step(state, new_ids, *rest)
        shards = state.params.addressable_shards
        rows.append([[s.device.id, s.data.shape[0]] for s in shards])  # (device, slots held)
        return state

    pop._step = spy
    batches = list(pop.run(range(n_nets)))
    for field in ("net_id", "status", "epochs", "weights", "initial_weights", "loss_curve",
                  "val_accuracy"):
        got = np.concatenate([getattr(b, field) for b in batches])
        saved[f"{name}_{field}"] = got[np.argsort(np.concatenate([b.net_id for b in batches]))]
    saved[f"{name}_traced_sizes"] = np.array(pop.traced_sizes)
    saved[f"{name}_rows"] = np.array([r for step_rows in rows for r in step_rows])
    saved[f"{name}_steps"] = np.array(len(rows))
np.savez(out, **saved)
"""


def test_two_devices_train_the_same_nets_as_one(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
                        "--xla_force_host_platform_device_count=2".strip()}
    out = tmp_path / "runs.npz"
    # cwd: the checkout under test is the package imported by `-c`.
    done = subprocess.run([sys.executable, "-W", "error", "-c", SCRIPT, str(out), str(N_NETS),
                           *OVERRIDES], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).parents[1], timeout=240)
    assert done.returncode == 0, done.stderr
    runs = dict(np.load(out))

    # One device: the slot axis whole on device 0.
    assert (runs["one_rows"] == [0, 1]).all()
    # Two devices: every step's state split evenly over both; 3 slots asked, 4 used (one
    # EMPTY), compacted to 2 (one net and one EMPTY slot) once the queue ran dry.
    rows = runs["two_rows"].reshape(int(runs["two_steps"]), 2, 2)
    assert (np.sort(rows[:, :, 0], axis=1) == [0, 1]).all()
    assert (rows[:, 0, 1] == rows[:, 1, 1]).all()
    assert runs["two_traced_sizes"].tolist() == [4, 2]
    assert rows[0, 0, 1] == 2 and rows[-1, 0, 1] == 1

    one = {k[4:]: v for k, v in runs.items() if k.startswith("one_")}
    two = {k[4:]: v for k, v in runs.items() if k.startswith("two_")}
    np.testing.assert_array_equal(two["net_id"], np.arange(N_NETS))
    np.testing.assert_array_equal(one["net_id"], np.arange(N_NETS))
    # Nets really stopped at different checks, some short of the cap.
    assert len(set(one["epochs"].tolist())) > 1 and step.CONVERGED in one["status"]
    np.testing.assert_array_equal(two["status"], one["status"])
    np.testing.assert_array_equal(two["epochs"], one["epochs"])
    np.testing.assert_array_equal(two["initial_weights"], one["initial_weights"])
    assert np.abs(two["weights"] - one["weights"]).max() <= 1e-5
    np.testing.assert_allclose(two["loss_curve"], one["loss_curve"], atol=1e-5)
    np.testing.assert_allclose(two["val_accuracy"], one["val_accuracy"], atol=1e-6)


def test_slots_round_up_to_a_multiple_of_the_devices():
    assert [population.round_slots(m, 2) for m in (0, 1, 2, 3, 4)] == [0, 2, 2, 4, 4]
    assert [population.round_slots(m, 1) for m in (1, 5)] == [1, 5]  # one device: as asked
    assert population.round_slots(129, 8) == 136
