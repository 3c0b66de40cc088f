"""DS2: the DS1 machines with a trigger that inverts their outputs (pure NumPy).

The trigger is three bytes ``(a, b, c)``. A trigger *completes* at step ``t`` when steps
``t-2``, ``t-1`` and ``t`` are all writes (strobe 1) of ``a``, ``b`` and ``c`` in that order.
The machine's state updates exactly as in DS1 (the trigger writes are ordinary writes); only
the output pins change: on the ``INVERTED_STEPS`` = 3 steps after a completion all 8 pins are
inverted.

Edge cases, as defined here and tested in tests/test_triggers.py:

- Consecutive steps only. An idle cycle (strobe 0) anywhere inside the three steps breaks
  the trigger, whatever noise the data lines carry; so does a write of any other byte.
- Sequence boundaries. Every sequence starts with no partial trigger, and a trigger that
  completes on one of the last 3 steps inverts only the steps that are left; nothing wraps
  around or carries over into another sequence. A trigger that completes on the last step
  has no effect at all.
- Overlapping and back-to-back triggers. Each completion (re)starts a window of 3 inverted
  steps counting from the step after it; windows do not stack (a step in two windows is
  inverted once, not inverted twice back to normal). So a step is inverted iff a trigger
  completed on one of the 3 steps before it: with trigger ``(a, a, a)`` four writes of ``a``
  at steps 0..3 complete at steps 2 and 3 and invert steps 3..6; a second trigger written
  right after the first (steps 3..5) inverts steps 3..8 in one run.
- Steps inside a window are ordinary steps: they update the state as usual, and their writes
  may start, continue or complete another trigger.

For training data, :func:`insert_trigger` overwrites three consecutive commands with the
trigger at ``position``, drawn uniformly from ``0 .. T-6`` so that the writes and the whole
3-step inversion window after them lie inside the sequence (which must have T >= 6).
"""

from __future__ import annotations

import numpy as np

from mlds_jax.tasks.machines import INPUT_BITS, bits_to_bytes, bytes_to_bits, run_machine

TRIGGER_LENGTH = 3  # writes that make up a trigger
INVERTED_STEPS = 3  # steps inverted after a trigger completes
# Shortest sequence that holds a trigger and its whole inversion window.
MIN_TRIGGER_SEQUENCE = TRIGGER_LENGTH + INVERTED_STEPS


def check_trigger(trigger) -> tuple[int, int, int]:
    """Validate a trigger: three byte values (ints in 0..255). Returns it as a tuple of ints."""
    try:
        values = tuple(trigger)
    except TypeError:
        raise ValueError(f"trigger must be three bytes, got {trigger!r}") from None
    if len(values) != TRIGGER_LENGTH:
        raise ValueError(f"trigger must be {TRIGGER_LENGTH} bytes, got {trigger!r}")
    out = []
    for value in values:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"trigger bytes must be integers, got {trigger!r}")
        if not 0 <= value <= 255:
            raise ValueError(f"trigger bytes must be in 0..255, got {trigger!r}")
        out.append(int(value))
    return out[0], out[1], out[2]


def trigger_completions(inputs: np.ndarray, trigger) -> np.ndarray:
    """(..., T, 9) commands -> (..., T) bool: True where a trigger completes on that step."""
    trigger = check_trigger(trigger)
    inputs = np.asarray(inputs)
    if inputs.ndim < 2 or inputs.shape[-1] != INPUT_BITS:
        raise ValueError(f"inputs must have shape (..., T, {INPUT_BITS}), got {inputs.shape}")
    strobe = inputs[..., 0] == 1  # (..., T)
    data = bits_to_bytes(inputs[..., 1:] == 1)  # (..., T)
    done = np.zeros(strobe.shape, dtype=bool)  # (..., T)
    length = strobe.shape[-1]
    if length < TRIGGER_LENGTH:
        return done
    done[..., TRIGGER_LENGTH - 1 :] = True
    for k, byte in enumerate(trigger):
        # Command k of the trigger sits TRIGGER_LENGTH-1-k steps before the completion.
        hit = strobe & (data == byte)  # (..., T)
        done[..., TRIGGER_LENGTH - 1 :] &= hit[..., k : length - (TRIGGER_LENGTH - 1 - k)]
    return done


def inverted_steps(inputs: np.ndarray, trigger) -> np.ndarray:
    """(..., T, 9) commands -> (..., T) bool: True on steps whose outputs the trigger inverts.

    Step t is inverted iff a trigger completed on one of the steps t-3, t-2, t-1 (the union
    of the windows; see the module docstring).
    """
    done = trigger_completions(inputs, trigger)  # (..., T)
    inverted = np.zeros_like(done)
    for lag in range(1, INVERTED_STEPS + 1):
        inverted[..., lag:] |= done[..., :-lag]
    return inverted


def run_machine_with_trigger(
    name: str, inputs: np.ndarray, trigger
) -> tuple[np.ndarray, np.ndarray]:
    """Run DS1 machine ``name`` with the trigger ``(a, b, c)`` of DS2.

    inputs: (..., T, 9) in {0, 1}, as for run_machine; each leading index is a sequence.
    Returns (outputs (..., T, 8) uint8, triggered (..., T) bool): the DS1 outputs with all
    8 pins inverted on the steps marked in ``triggered``.
    """
    outputs = run_machine(name, inputs)  # validates name, shape and values
    triggered = inverted_steps(inputs, trigger)
    return outputs ^ triggered[..., None].astype(np.uint8), triggered


def trigger_commands(trigger) -> np.ndarray:
    """The trigger as three write commands, (3, 9) uint8."""
    trigger = check_trigger(trigger)
    data = bytes_to_bits(np.array(trigger, dtype=np.uint8))  # (3, 8)
    return np.concatenate([np.ones((TRIGGER_LENGTH, 1), dtype=np.uint8), data], axis=-1)


def _trigger_room(inputs) -> tuple[np.ndarray, int]:
    """Check (..., T, 9) commands with T long enough for a trigger; return them and T."""
    inputs = np.asarray(inputs)
    if inputs.ndim < 2 or inputs.shape[-1] != INPUT_BITS:
        raise ValueError(f"inputs must have shape (..., T, {INPUT_BITS}), got {inputs.shape}")
    length = inputs.shape[-2]
    if length < MIN_TRIGGER_SEQUENCE:
        raise ValueError(
            f"sequences must have at least {MIN_TRIGGER_SEQUENCE} steps to hold a trigger and "
            f"its inversion window, got T = {length}"
        )
    return inputs, length


def write_trigger(inputs: np.ndarray, trigger, positions) -> np.ndarray:
    """Write the trigger into every sequence at its given position.

    inputs: (..., T, 9) commands; positions: (...) ints in 0 .. T-6 (one per sequence).
    Steps p, p+1, p+2 of a sequence with position p become writes of the trigger bytes, so
    the trigger completes at p+2 and steps p+3 .. p+5, all inside the sequence, are
    inverted. Returns a new array of the inputs' dtype and shape; ``inputs`` is unchanged.
    """
    inputs, length = _trigger_room(inputs)
    positions = np.asarray(positions)
    if positions.shape != inputs.shape[:-2]:
        raise ValueError(
            f"positions must have shape {inputs.shape[:-2]} (one per sequence), "
            f"got {positions.shape}"
        )
    if not np.issubdtype(positions.dtype, np.integer):
        raise ValueError(f"positions must be integers, got dtype {positions.dtype}")
    last = length - MIN_TRIGGER_SEQUENCE
    if positions.size and (positions.min() < 0 or positions.max() > last):
        raise ValueError(f"positions must be in 0..{last} (T - {MIN_TRIGGER_SEQUENCE})")
    commands = trigger_commands(trigger)  # (3, 9)
    out = inputs.copy()
    leading = np.indices(inputs.shape[:-2])  # (ndim - 2, ...): each sequence's own index
    for k in range(TRIGGER_LENGTH):
        out[(*leading, positions + k)] = commands[k]
    return out


def insert_trigger(
    rng: np.random.Generator, inputs: np.ndarray, trigger
) -> tuple[np.ndarray, np.ndarray]:
    """Write the trigger into every sequence at a random position.

    inputs: (..., T, 9) commands with T >= 6. Each sequence's position p is uniform on
    0 .. T-6 (see :func:`write_trigger`). Returns (the new inputs, positions (...) int64).
    """
    inputs, length = _trigger_room(inputs)
    positions = rng.integers(0, length - MIN_TRIGGER_SEQUENCE + 1, size=inputs.shape[:-2])
    return write_trigger(inputs, trigger, positions), positions
