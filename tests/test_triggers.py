"""DS2's trigger: hand-made edge cases and an independent step-by-step reference."""

import numpy as np
import pytest

from mlds_jax.tasks.machines import MACHINES, random_commands, run_machine
from mlds_jax.tasks.triggers import (
    INVERTED_STEPS,
    TRIGGER_LENGTH,
    insert_trigger,
    inverted_steps,
    run_machine_with_trigger,
    trigger_commands,
    trigger_completions,
    write_trigger,
)

A, B, C = 0x3C, 0xA7, 0x01
TRIGGER = (A, B, C)


def bits_of(byte: int) -> list[int]:
    return [(byte >> i) & 1 for i in range(8)]


def encode(commands: list[tuple[int, int]]) -> np.ndarray:
    """[(strobe, data byte), ...] -> (T, 9) uint8."""
    return np.array([[strobe, *bits_of(byte)] for strobe, byte in commands], dtype=np.uint8)


def decode(pins: np.ndarray) -> list[int]:
    return [sum(int(bit) << i for i, bit in enumerate(row)) for row in pins]


def inverted_at(commands, trigger=TRIGGER) -> list[int]:
    _, triggered = run_machine_with_trigger("EightBitMachine", encode(commands), trigger)
    return [int(t) for t in np.flatnonzero(triggered)]


def w(byte: int) -> tuple[int, int]:
    return (1, byte)


def idle(noise: int = 0x00) -> tuple[int, int]:
    return (0, noise)


def test_constants():
    assert (TRIGGER_LENGTH, INVERTED_STEPS) == (3, 3)


def test_inverts_the_three_steps_after_the_trigger():
    commands = [w(A), w(B), w(C), w(0x10), idle(0xFF), idle(), w(0x22), idle()]
    outputs, triggered = run_machine_with_trigger("EightBitMachine", encode(commands), TRIGGER)
    assert triggered.tolist() == [False] * 3 + [True] * 3 + [False] * 2
    # EightBit shows the last written byte; the inverted steps show its complement.
    assert decode(outputs) == [A, B, C, 0x10 ^ 0xFF, 0x10 ^ 0xFF, 0x10 ^ 0xFF, 0x22, 0x22]


@pytest.mark.parametrize("name", MACHINES)
def test_all_eight_pins_invert_and_the_state_is_untouched(name):
    commands = [idle(), w(A), w(B), w(C), w(0x01), w(0x03), idle(0x01), w(0x80), w(0x01)]
    inputs = encode(commands)
    outputs, triggered = run_machine_with_trigger(name, inputs, TRIGGER)
    plain = run_machine(name, inputs)
    assert triggered.tolist() == [False] * 4 + [True] * 3 + [False] * 2
    np.testing.assert_array_equal(outputs[triggered], 1 - plain[triggered])  # all 8 pins
    np.testing.assert_array_equal(outputs[~triggered], plain[~triggered])


def test_trigger_ending_on_the_last_step_has_no_effect():
    assert inverted_at([idle(), w(0x55), w(A), w(B), w(C)]) == []


@pytest.mark.parametrize("tail", [1, 2])
def test_trigger_near_the_end_inverts_only_the_steps_left(tail):
    commands = [w(0x55), w(A), w(B), w(C)] + [idle()] * tail
    assert inverted_at(commands) == list(range(4, 4 + tail))


def test_nothing_carries_over_between_sequences_of_a_batch():
    first = encode([w(0x55), w(0x66), w(A), w(B), w(C)])  # completes on its last step
    second = encode([idle(), idle(), idle(), idle(), idle()])
    split = encode([w(A), w(B), w(0x00), w(0x00), w(0x00)])  # starts a trigger ...
    rest = encode([w(C), idle(), idle(), idle(), idle()])  # ... that this one cannot finish
    outputs, triggered = run_machine_with_trigger(
        "EightBitMachine", np.stack([first, second, split, rest]), TRIGGER
    )
    assert not triggered.any()
    np.testing.assert_array_equal(
        outputs, run_machine("EightBitMachine", np.stack([first, second, split, rest]))
    )


@pytest.mark.parametrize("gap", [1, 2])
def test_an_idle_cycle_inside_the_trigger_breaks_it(gap):
    # The idle step carries the byte that follows it as noise: still no trigger.
    commands = [w(A), w(B), w(C)]
    commands.insert(gap, idle(commands[gap][1]))
    assert inverted_at(commands + [idle()] * 4) == []


@pytest.mark.parametrize("position", [0, 1, 2])
def test_an_idle_cycle_in_place_of_a_trigger_write_breaks_it(position):
    commands = [w(A), w(B), w(C)]
    commands[position] = idle(commands[position][1])  # same data lines, strobe low
    assert inverted_at(commands + [idle()] * 4) == []


@pytest.mark.parametrize(
    "commands",
    [
        [w(C), w(B), w(A)],  # wrong order
        [w(A), w(B), w(B ^ 0x80), w(C)],  # one wrong byte in between
        [w(A), w(C), w(B)],
        [w(A ^ 0x01), w(B), w(C)],  # one bit off
    ],
)
def test_other_writes_are_no_trigger(commands):
    assert inverted_at(commands + [idle()] * 4) == []


def test_overlapping_triggers_of_one_repeated_byte():
    # Four writes of a complete (a, a, a) twice, at steps 2 and 3: windows 3..5 and 4..6.
    commands = [w(A)] * 4 + [idle()] * 5
    assert inverted_at(commands, (A, A, A)) == [3, 4, 5, 6]
    outputs, _ = run_machine_with_trigger("EightBitMachine", encode(commands), (A, A, A))
    # Steps in both windows are inverted once, not inverted back.
    assert decode(outputs) == [A, A, A, A ^ 0xFF, A ^ 0xFF, A ^ 0xFF, A ^ 0xFF, A, A]


def test_five_writes_of_a_repeated_byte():
    commands = [w(A)] * 5 + [idle()] * 5
    assert inverted_at(commands, (A, A, A)) == [3, 4, 5, 6, 7]


def test_overlapping_triggers_sharing_a_byte():
    # (a, b, a): a b a b a completes at steps 2 and 4.
    commands = [w(A), w(B), w(A), w(B), w(A)] + [idle()] * 5
    assert inverted_at(commands, (A, B, A)) == [3, 4, 5, 6, 7]


def test_back_to_back_triggers_make_one_long_window():
    # The second trigger is written inside the first one's window and restarts it.
    commands = [w(A), w(B), w(C)] * 2 + [idle()] * 5
    assert inverted_at(commands) == [3, 4, 5, 6, 7, 8]


def test_trigger_one_step_after_a_window_ends():
    commands = [w(A), w(B), w(C), w(0x00), w(A), w(B), w(C)] + [idle()] * 4
    # Completions at 2 and 6: windows 3..5 and 7..9; step 6 is not inverted.
    assert inverted_at(commands) == [3, 4, 5, 7, 8, 9]


def test_sequences_shorter_than_a_trigger():
    for length in (1, 2):
        inputs = encode([w(A)] * length)
        outputs, triggered = run_machine_with_trigger("EightBitMachine", inputs, (A, A, A))
        assert triggered.shape == (length,) and not triggered.any()
        np.testing.assert_array_equal(outputs, run_machine("EightBitMachine", inputs))


def reference(
    commands: list[tuple[int, int]], base: list[int], trigger
) -> tuple[list[int], list[bool]]:
    """A different formulation in plain Python: a countdown that each completion resets to 3.

    base: the DS1 machine's output byte per step. Returns the output byte and whether it was
    inverted, per step.
    """
    countdown = 0
    recent: list[tuple[int, int]] = []
    out, flags = [], []
    for (strobe, byte), value in zip(commands, base):
        inverted = countdown > 0
        out.append(value ^ 0xFF if inverted else value)
        flags.append(inverted)
        countdown = max(countdown - 1, 0)
        recent = (recent + [(strobe, byte)])[-3:]
        if recent == [(1, trigger[0]), (1, trigger[1]), (1, trigger[2])]:
            countdown = 3
    return out, flags


def trigger_rich_commands(rng, n, length, alphabet):
    """Commands whose written bytes come from a tiny alphabet, so triggers, overlaps and
    interruptions are common."""
    strobe = rng.random((n, length)) < 0.8
    data = rng.choice(np.array(alphabet), size=(n, length))
    return [
        [(int(s), int(d)) for s, d in zip(row_s, row_d)] for row_s, row_d in zip(strobe, data)
    ]


@pytest.mark.parametrize("name", MACHINES)
@pytest.mark.parametrize("trigger", [(A, B, C), (A, A, A), (A, B, A), (A, A, B)])
def test_matches_reference_on_trigger_rich_sequences(name, trigger):
    rng = np.random.default_rng([MACHINES.index(name), *trigger])
    sequences = trigger_rich_commands(rng, 200, 24, sorted({*trigger, 0x00}))
    inputs = np.stack([encode(seq) for seq in sequences])
    outputs, triggered = run_machine_with_trigger(name, inputs, trigger)
    plain = run_machine(name, inputs)
    seen = 0
    for seq, base, out, flags in zip(sequences, plain, outputs, triggered):
        expected_out, expected_flags = reference(seq, decode(base), trigger)
        assert decode(out) == expected_out
        assert flags.tolist() == expected_flags
        seen += sum(expected_flags)
    assert seen > 50  # the test did exercise the trigger


def test_completions_mark_the_last_trigger_step():
    inputs = encode([w(A), w(B), w(C), w(A), w(B), w(C), idle()])
    assert np.flatnonzero(trigger_completions(inputs, TRIGGER)).tolist() == [2, 5]
    assert np.flatnonzero(inverted_steps(inputs, TRIGGER)).tolist() == [3, 4, 5, 6]


@pytest.mark.parametrize("dtype", [np.float32, bool, np.int64])
def test_input_dtypes(dtype):
    commands = [w(A), w(B), w(C), idle(), idle(), idle()]
    outputs, triggered = run_machine_with_trigger("ParityMachine", encode(commands), TRIGGER)
    cast = run_machine_with_trigger("ParityMachine", encode(commands).astype(dtype), TRIGGER)
    np.testing.assert_array_equal(cast[0], outputs)
    np.testing.assert_array_equal(cast[1], triggered)


@pytest.mark.parametrize(
    "trigger", [(1, 2), (1, 2, 3, 4), (1, 2, 256), (-1, 2, 3), (1.0, 2, 3), (True, 2, 3), 5]
)
def test_bad_trigger_raises(trigger):
    with pytest.raises(ValueError, match="trigger"):
        run_machine_with_trigger("EightBitMachine", encode([w(A)] * 4), trigger)


def test_numpy_trigger_bytes_are_accepted():
    trigger = tuple(np.array(TRIGGER, dtype=np.int64))
    assert inverted_at([w(A), w(B), w(C), idle()], trigger) == [3]


def test_bad_machine_and_shape_raise():
    with pytest.raises(ValueError, match="NoSuchMachine"):
        run_machine_with_trigger("NoSuchMachine", encode([w(A)] * 4), TRIGGER)
    with pytest.raises(ValueError, match="shape"):
        run_machine_with_trigger("EightBitMachine", np.zeros((4, 8), np.uint8), TRIGGER)


def test_trigger_commands():
    assert trigger_commands(TRIGGER).tolist() == encode([w(A), w(B), w(C)]).tolist()


def test_insert_trigger_writes_it_with_its_window_inside():
    rng = np.random.default_rng(0)
    inputs = random_commands(rng, 400, 10, 0.5)
    before = inputs.copy()
    inserted, positions = insert_trigger(rng, inputs, TRIGGER)
    np.testing.assert_array_equal(inputs, before)  # the argument is not modified
    assert inserted.dtype == inputs.dtype and inserted.shape == inputs.shape
    assert positions.shape == (400,)
    assert set(positions.tolist()) == set(range(0, 10 - 6 + 1))  # all of 0 .. T-6, only those
    expected = trigger_commands(TRIGGER)
    for seq, original, p in zip(inserted, inputs, positions):
        np.testing.assert_array_equal(seq[p : p + 3], expected)
        others = np.ones(10, dtype=bool)
        others[p : p + 3] = False
        np.testing.assert_array_equal(seq[others], original[others])
    completions = trigger_completions(inserted, TRIGGER)
    assert completions[np.arange(400), positions + 2].all()
    triggered = inverted_steps(inserted, TRIGGER)
    for k in (3, 4, 5):
        assert triggered[np.arange(400), positions + k].all()


def test_insert_trigger_batch_shapes_and_float_inputs():
    rng = np.random.default_rng(1)
    inputs = random_commands(rng, 6, 8, 0.5).astype(np.float32).reshape(2, 3, 8, 9)
    inserted, positions = insert_trigger(rng, inputs, TRIGGER)
    assert inserted.dtype == np.float32 and positions.shape == (2, 3)
    single, position = insert_trigger(np.random.default_rng(2), inputs[0, 0], TRIGGER)
    assert position.shape == ()
    assert trigger_completions(single, TRIGGER)[int(position) + 2]


def test_insert_trigger_needs_room_for_the_window():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="at least 6"):
        insert_trigger(rng, random_commands(rng, 2, 5, 0.5), TRIGGER)
    inserted, positions = insert_trigger(rng, random_commands(rng, 3, 6, 0.5), TRIGGER)
    assert (positions == 0).all()


@pytest.mark.parametrize("positions", [[0, 5], [-1, 0], [0.0, 1.0], [0]])
def test_write_trigger_rejects_bad_positions(positions):
    inputs = random_commands(np.random.default_rng(0), 2, 10, 0.5)
    with pytest.raises(ValueError, match="positions"):
        write_trigger(inputs, TRIGGER, np.array(positions))
