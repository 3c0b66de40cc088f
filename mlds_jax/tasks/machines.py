"""DS1: five simple machines on an 8-bit bus (pure NumPy).

Every time step the host issues one command of 9 bits: ``x[0]`` is the write strobe
(1: write the data byte, 0: idle cycle) and ``x[1:9]`` is the data byte, least significant
bit first. On idle cycles the data lines carry noise that the machine ignores. After each
command the machine drives 8 output pins (pin ``i`` = bit ``i`` of its output byte). State
is 0 at the start of every sequence.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

INPUT_BITS = 9  # write strobe + 8 data lines
OUTPUT_BITS = 8  # output pins


class _Machine(NamedTuple):
    """A machine as two byte-wise rules over uint8 arrays of any shape."""

    write: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (state, data byte) -> state
    pins: Callable[[np.ndarray], np.ndarray]  # state -> output byte


# Parity of every byte value, so that parity is one table lookup per step.
_PARITY = np.array([bin(b).count("1") & 1 for b in range(256)], dtype=np.uint8)

_MACHINES: dict[str, _Machine] = {
    "SingleDirectMachine": _Machine(write=lambda s, d: d & 1, pins=lambda s: s),
    "SingleInvertMachine": _Machine(write=lambda s, d: d & 1, pins=lambda s: s ^ 1),
    "EightBitMachine": _Machine(write=lambda r, d: d, pins=lambda r: r),
    "SimpleXORMachine": _Machine(write=lambda r, d: r ^ d, pins=lambda r: r),
    "ParityMachine": _Machine(write=lambda p, d: p ^ _PARITY[d], pins=lambda p: p),
}

# Task index = position in this tuple.
MACHINES: tuple[str, ...] = tuple(_MACHINES)


def bits_to_bytes(bits: np.ndarray) -> np.ndarray:
    """(..., 8) {0,1}, LSB first -> (...) uint8."""
    return np.packbits(np.asarray(bits, dtype=np.uint8), axis=-1, bitorder="little")[..., 0]


def bytes_to_bits(values: np.ndarray) -> np.ndarray:
    """(...) uint8 -> (..., 8) uint8 {0,1}, LSB first."""
    values = np.asarray(values, dtype=np.uint8)
    return np.unpackbits(values[..., None], axis=-1, bitorder="little")


def _machine(name: str) -> _Machine:
    try:
        return _MACHINES[name]
    except KeyError:
        raise ValueError(
            f"unknown machine {name!r}; valid machines: {', '.join(MACHINES)}"
        ) from None


def run_machine(name: str, inputs: np.ndarray) -> np.ndarray:
    """Run machine ``name`` on command sequences.

    inputs: (..., T, 9) with values in {0, 1} (any numeric or bool dtype); every leading
    axis is a separate sequence, each starting from state 0.
    Returns (..., T, 8) uint8: the output pins after each step's command.
    """
    machine = _machine(name)
    inputs = np.asarray(inputs)
    if inputs.ndim < 2 or inputs.shape[-1] != INPUT_BITS:
        raise ValueError(f"inputs must have shape (..., T, {INPUT_BITS}), got {inputs.shape}")
    if not np.all((inputs == 0) | (inputs == 1)):
        raise ValueError("inputs must contain only 0 and 1")
    strobe = inputs[..., 0] == 1  # (..., T)
    data = bits_to_bytes(inputs[..., 1:] == 1)  # (..., T)
    state = np.zeros(data.shape[:-1], dtype=np.uint8)  # (...)
    out = np.empty_like(data)  # (..., T) output bytes
    for t in range(data.shape[-1]):
        state = np.where(strobe[..., t], machine.write(state, data[..., t]), state)
        out[..., t] = machine.pins(state)
    return bytes_to_bits(out)


def random_commands(
    rng: np.random.Generator, n_sequences: int, length: int, write_probability
) -> np.ndarray:
    """Random command sequences, (n_sequences, length, 9) uint8.

    The strobe is Bernoulli(write_probability) per step (a float, or one per sequence as an
    (n_sequences,) array); the data bits are uniform on every step, so idle steps carry noise.
    """
    if n_sequences < 1:
        raise ValueError(f"n_sequences must be positive, got {n_sequences}")
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    p = np.asarray(write_probability, dtype=np.float64)
    if p.ndim not in (0, 1) or (p.ndim == 1 and p.shape != (n_sequences,)):
        raise ValueError(f"write_probability must be a number or one per sequence, got shape "
                         f"{p.shape}")
    if not ((0.0 < p) & (p <= 1.0)).all():
        raise ValueError(f"write_probability must be in (0, 1], got {write_probability}")
    strobe = rng.random((n_sequences, length, 1)) < (p if p.ndim == 0 else p[:, None, None])
    data = rng.integers(0, 2, size=(n_sequences, length, INPUT_BITS - 1), dtype=np.uint8)
    return np.concatenate([strobe.astype(np.uint8), data], axis=-1)
