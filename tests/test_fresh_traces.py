"""benchmarks/fresh_traces.py writes the machines and DS2's trigger again from SPEC.md; those
rewrites must agree with the package's own (two independent codings of one spec), on
commands dense with triggers, back-to-back and overlapping ones included."""

import numpy as np
import pytest

from mlds_jax.tasks.machines import run_machine
from mlds_jax.tasks.triggers import run_machine_with_trigger

MACHINES = ["SingleDirectMachine", "SingleInvertMachine", "EightBitMachine",
            "SimpleXORMachine", "ParityMachine"]


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.syspath_prepend("benchmarks")
    import fresh_traces

    return fresh_traces


@pytest.mark.parametrize("trigger", [(0xA5, 0x3C, 0x0F), (7, 7, 7)])
def test_the_rewritten_trigger_agrees_with_the_package(fresh, trigger):
    rng = np.random.default_rng(5)
    strobe, data, _ = fresh.fresh_commands(300, 40, 0.7, seed=9)
    strobe, data = fresh.with_trigger(strobe, data, trigger, seed=9)  # one per sequence
    for _ in range(2):  # and more at random places: overlaps, back-to-back windows
        strobe, data = fresh.with_trigger(strobe, data, trigger, seed=int(rng.integers(1e6)))
    inputs = np.concatenate([strobe[..., None], data], axis=2)
    for name in MACHINES:
        plain = fresh.machine_trace(name, strobe, data)
        np.testing.assert_array_equal(plain, run_machine(name, inputs), err_msg=name)
        want, triggered = run_machine_with_trigger(name, inputs, trigger)
        assert triggered.any(axis=1).all()  # every sequence holds an inversion window
        np.testing.assert_array_equal(
            fresh.invert_after_triggers(strobe, data, plain, trigger), want, err_msg=name)
