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


def test_window_breakdown_on_a_hand_written_trace(fresh):
    """`--window`'s split of a DS2 net's errors, on a trace written out by hand: the trigger
    at steps 0-2 inverts steps 3-5; step 3 is idle (the trigger's byte held, inverted), step
    4 writes a new byte, so steps 4 and 5 show that byte inverted."""
    trigger = (0xA5, 0x3C, 0x0F)
    strobe = np.array([[1, 1, 1, 0, 1, 0, 1, 0]], np.uint8)
    byte = np.array([[0xA5, 0x3C, 0x0F, 0x00, 0x77, 0x00, 0x12, 0x00]])
    data = ((byte[..., None] >> np.arange(8)) & 1).astype(np.uint8)
    wrong = np.zeros((1, 8), bool)
    got = fresh.window_breakdown(strobe, data, wrong, trigger)
    assert got == {"window_new": (0.0, 2), "window_held": (0.0, 1), "elsewhere": (0.0, 5)}
    wrong[0, [4, 6]] = True  # a new byte not inverted; an ordinary write wrong
    got = fresh.window_breakdown(strobe, data, wrong, trigger)
    assert got["window_new"] == (0.5, 2) and got["window_held"] == (0.0, 1)
    assert got["elsewhere"] == (0.2, 5)
    # A second trigger right after the first (steps 3-5) restarts the window from step 6:
    # steps 6-8 are inverted, and no byte is written after it, so all three hold.
    strobe = np.array([[1, 1, 1, 1, 1, 1, 0, 0, 0, 0]], np.uint8)
    byte = np.array([[0xA5, 0x3C, 0x0F, 0xA5, 0x3C, 0x0F, 0, 0, 0, 0]])
    data = ((byte[..., None] >> np.arange(8)) & 1).astype(np.uint8)
    got = fresh.window_breakdown(strobe, data, np.zeros((1, 10), bool), trigger)
    assert got["window_held"][1] == 3 and got["window_new"][1] == 3  # steps 3-5: new bytes
    assert got["elsewhere"][1] == 4


def test_flip_breakdown_counts_flips_and_skips_steps_entered_wrong(fresh):
    """`--flips` on a trace written out by hand: a net that flips its output on the first
    two odd writes only (a counter of two), then holds."""
    strobe = np.array([[1, 0, 1, 1, 1, 1, 0, 1]], np.uint8)
    byte = np.array([[0x01, 0x55, 0x03, 0x07, 0x80, 0x0F, 0x00, 0xFE]])  # odd, ., even, odd x2
    data = ((byte[..., None] >> np.arange(8)) & 1).astype(np.uint8)
    want = fresh.machine_trace("ParityMachine", strobe, data)[0, :, 0]
    np.testing.assert_array_equal(want, [1, 1, 1, 0, 1, 1, 1, 0])
    counter = np.array([1, 1, 1, 0, 0, 0, 0, 1])  # flips twice, then misses the third
    got = fresh.flip_breakdown(strobe, data, (counter == want)[None])
    # Flips at steps 0 (none before), 3 (one before), 4 (two), 7 (three): 4 is wrong; 7 is
    # entered wrong (steps 4-6 wrong), so it is not counted; 5 and 6 neither.
    assert got["flip 0-1"] == (0.0, 2) and got["flip 2-3"] == (1.0, 1)
    assert got["flip 4-5"][1] == 0 and np.isnan(got["flip 4-5"][0])
    assert got["even write"] == (0.0, 1) and got["idle"] == (0.0, 1)  # steps 2; 1
