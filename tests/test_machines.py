"""The DS1 machines against hand-computed traces and an independent pure-Python reference."""

import numpy as np
import pytest

from mlds_jax.tasks.machines import (
    INPUT_BITS,
    MACHINES,
    OUTPUT_BITS,
    random_commands,
    run_machine,
)


def bits_of(byte: int) -> list[int]:
    """LSB-first bits, written without NumPy so the tests do not share the code's helpers."""
    return [(byte >> i) & 1 for i in range(8)]


def encode(commands: list[tuple[int, int]]) -> np.ndarray:
    """[(strobe, data byte), ...] -> (T, 9) uint8."""
    return np.array([[strobe, *bits_of(byte)] for strobe, byte in commands], dtype=np.uint8)


def decode(pins: np.ndarray) -> list[int]:
    """(T, 8) pins -> output byte per step."""
    return [sum(int(bit) << i for i, bit in enumerate(row)) for row in pins]


# Idle steps carry noise: 0xFF (bit 0 set, even parity), 0xA5, 0x3D (odd parity), 0x80.
TRACE = [
    (0, 0xFF),
    (1, 0x07),
    (0, 0xA5),
    (1, 0x5A),
    (1, 0x01),
    (0, 0x3D),
    (1, 0xFE),
    (0, 0xFF),
    (0, 0x80),
]

# Output byte after each step of TRACE, worked out by hand.
EXPECTED = {
    "SingleDirectMachine": [0, 1, 1, 0, 1, 1, 0, 0, 0],
    "SingleInvertMachine": [1, 0, 0, 1, 0, 0, 1, 1, 1],
    "EightBitMachine": [0x00, 0x07, 0x07, 0x5A, 0x01, 0x01, 0xFE, 0xFE, 0xFE],
    # 0x07, 0x07^0x5A = 0x5D, 0x5D^0x01 = 0x5C, 0x5C^0xFE = 0xA2
    "SimpleXORMachine": [0x00, 0x07, 0x07, 0x5D, 0x5C, 0x5C, 0xA2, 0xA2, 0xA2],
    # parities of the writes: 0x07 -> 1, 0x5A -> 0, 0x01 -> 1, 0xFE -> 1
    "ParityMachine": [0, 1, 1, 1, 0, 0, 1, 1, 1],
}


def test_machine_names_and_sizes():
    assert MACHINES == (
        "SingleDirectMachine",
        "SingleInvertMachine",
        "EightBitMachine",
        "SimpleXORMachine",
        "ParityMachine",
    )
    assert (INPUT_BITS, OUTPUT_BITS) == (9, 8)


@pytest.mark.parametrize("name", MACHINES)
def test_hand_computed_trace(name):
    pins = run_machine(name, encode(TRACE))
    assert pins.shape == (len(TRACE), 8)
    assert pins.dtype == np.uint8
    assert decode(pins) == EXPECTED[name]


@pytest.mark.parametrize(
    ("name", "expected_pin0"),
    [
        ("SingleDirectMachine", 0),
        ("SingleInvertMachine", 1),
        ("EightBitMachine", 0),
        ("SimpleXORMachine", 0),
        ("ParityMachine", 0),
    ],
)
def test_all_idle_sequence_shows_the_initial_state(name, expected_pin0):
    pins = run_machine(name, encode([(0, 0xFF), (0, 0x5B), (0, 0x01), (0, 0xFE)]))
    assert decode(pins) == [expected_pin0] * 4


def reference(name: str, commands: list[tuple[int, int]]) -> list[int]:
    """Step-by-step reference over Python ints: output byte after each command."""
    state = 0
    outputs = []
    for strobe, byte in commands:
        if strobe:
            if name in ("SingleDirectMachine", "SingleInvertMachine"):
                state = byte % 2
            elif name == "EightBitMachine":
                state = byte
            elif name == "SimpleXORMachine":
                state = state ^ byte
            elif name == "ParityMachine":
                ones = sum(bits_of(byte))
                state = (state + ones) % 2
        outputs.append(1 - state if name == "SingleInvertMachine" else state)
    return outputs


@pytest.mark.parametrize("name", MACHINES)
def test_matches_reference_on_random_sequences(name):
    rng = np.random.default_rng(1234)
    for write_probability in (0.1, 0.5, 0.9):
        inputs = random_commands(rng, 100, 17, write_probability)
        pins = run_machine(name, inputs)
        for seq, out in zip(inputs, pins):
            commands = [(int(row[0]), decode(row[None, 1:])[0]) for row in seq]
            assert decode(out) == reference(name, commands)


@pytest.mark.parametrize("name", MACHINES)
def test_idle_noise_never_changes_the_output(name):
    rng = np.random.default_rng(7)
    inputs = random_commands(rng, 200, 24, 0.5)
    renoised = inputs.copy()
    idle = inputs[..., 0] == 0
    assert idle.any()
    fresh = rng.integers(0, 2, size=inputs.shape[:-1] + (8,), dtype=np.uint8)
    renoised[..., 1:][idle] = fresh[idle]
    assert (renoised != inputs).any()
    np.testing.assert_array_equal(run_machine(name, renoised), run_machine(name, inputs))


@pytest.mark.parametrize("name", MACHINES)
def test_write_data_does_change_the_output(name):
    # The converse of the noise test: the same change on write steps must show up.
    inputs = encode([(1, 0x00), (1, 0x00)])
    flipped = encode([(1, 0x01), (1, 0x00)])  # bit 0 and parity both flip
    assert not np.array_equal(run_machine(name, flipped), run_machine(name, inputs))


@pytest.mark.parametrize("name", MACHINES)
def test_batch_shapes(name):
    rng = np.random.default_rng(3)
    flat = random_commands(rng, 6, 11, 0.5)  # (6, 11, 9)
    expected = np.stack([run_machine(name, seq) for seq in flat])  # one sequence at a time
    assert expected.shape == (6, 11, 8)
    np.testing.assert_array_equal(run_machine(name, flat), expected)
    batched = run_machine(name, flat.reshape(2, 3, 11, 9))
    assert batched.shape == (2, 3, 11, 8)
    np.testing.assert_array_equal(batched.reshape(6, 11, 8), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, bool, np.int64])
def test_input_dtypes(dtype):
    inputs = encode(TRACE)
    for name in MACHINES:
        assert decode(run_machine(name, inputs.astype(dtype))) == EXPECTED[name]


def test_unknown_name_raises_and_lists_valid_names():
    with pytest.raises(ValueError, match="NoSuchMachine") as info:
        run_machine("NoSuchMachine", encode(TRACE))
    for name in MACHINES:
        assert name in str(info.value)


@pytest.mark.parametrize("shape", [(9,), (4, 8), (4, 10)])
def test_bad_input_shape_raises(shape):
    with pytest.raises(ValueError, match="shape"):
        run_machine("EightBitMachine", np.zeros(shape, dtype=np.uint8))


def test_non_binary_input_raises():
    inputs = encode(TRACE).astype(np.float32)
    inputs[2, 3] = 0.5
    with pytest.raises(ValueError, match="0 and 1"):
        run_machine("EightBitMachine", inputs)


def test_random_commands_shape_and_distribution():
    rng = np.random.default_rng(0)
    n, length, p = 400, 50, 0.3
    commands = random_commands(rng, n, length, p)
    assert commands.shape == (n, length, 9)
    assert commands.dtype == np.uint8
    assert set(np.unique(commands)) <= {0, 1}
    steps = n * length
    assert abs(commands[..., 0].mean() - p) < 5 * np.sqrt(p * (1 - p) / steps)
    # Every data line is a fair coin, on idle and write steps alike.
    for strobe in (0, 1):
        data = commands[..., 1:][commands[..., 0] == strobe]  # (steps with this strobe, 8)
        bound = 5 * np.sqrt(0.25 / data.shape[0])
        assert np.all(np.abs(data.mean(axis=0) - 0.5) < bound)


def test_random_commands_always_writes_at_probability_one():
    commands = random_commands(np.random.default_rng(0), 10, 20, 1.0)
    assert np.all(commands[..., 0] == 1)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"n_sequences": 0}, "n_sequences"),
        ({"length": 0}, "length"),
        ({"write_probability": 0.0}, "write_probability"),
        ({"write_probability": 1.5}, "write_probability"),
    ],
)
def test_random_commands_rejects_bad_arguments(kwargs, argument):
    args = {"n_sequences": 2, "length": 3, "write_probability": 0.5, **kwargs}
    with pytest.raises(ValueError, match=argument):
        random_commands(np.random.default_rng(0), **args)
