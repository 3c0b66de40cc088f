"""DS3's automata: their guaranteed properties, checked by the independent tests/automata_check,
and their runs against hand-made traces and a plain-Python step loop."""

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlds_jax.tasks import automata
from mlds_jax.tasks.automata import (
    N_INPUTS,
    N_OUTPUTS,
    STATE_RANGE,
    Automaton,
    from_dict,
    make_automata,
    make_automaton,
    random_inputs,
    run_automaton,
    stack_automata,
    to_dict,
    unstack_automata,
)
from tests.automata_check import (
    distinguishable_pairs,
    find_hamiltonian_cycle,
    has_hamiltonian_cycle,
    has_hidden_state,
    is_hamiltonian_cycle,
    is_minimal,
    is_total,
)

seeds = st.integers(0, 2**32 - 1)
indices = st.integers(0, 99)


def test_constants():
    assert (N_INPUTS, N_OUTPUTS) == (39, 14)
    lo, hi = STATE_RANGE
    assert N_OUTPUTS < lo <= hi


@settings(max_examples=150, deadline=None, database=None)
@given(seed=seeds, index=indices)
def test_every_automaton_has_the_guaranteed_properties(seed, index):
    a = make_automaton(seed, index)
    lo, hi = STATE_RANGE
    assert lo <= a.n_states <= hi
    assert is_total(a.transitions)
    cycle = find_hamiltonian_cycle(a.transitions)
    assert cycle is not None and is_hamiltonian_cycle(a.transitions, cycle)
    assert has_hidden_state(a.transitions, a.outputs)
    assert is_minimal(a.transitions, a.outputs)
    assert len(np.unique(a.outputs)) == N_OUTPUTS
    assert 0 <= a.start < a.n_states


@settings(max_examples=30, deadline=None, database=None)
@given(seed=seeds, index=indices)
def test_deterministic_in_seed_and_index(seed, index):
    first, second = make_automaton(seed, index), make_automaton(seed, index)
    assert to_dict(first) == to_dict(second)
    assert to_dict(make_automaton(seed, index + 1)) != to_dict(first)
    assert to_dict(make_automaton(seed + 1, index)) != to_dict(first)


def test_make_automata_is_make_automaton_per_index():
    listed = make_automata(5, 4)
    assert [to_dict(a) for a in listed] == [to_dict(make_automaton(5, k)) for k in range(4)]


def test_state_counts_span_the_range():
    counts = [make_automaton(0, k).n_states for k in range(300)]
    lo, hi = STATE_RANGE
    assert min(counts) <= lo + 2 and max(counts) >= hi - 2
    assert len(set(counts)) > (hi - lo) // 2


def test_redraws_until_the_checks_pass(monkeypatch):
    """The generator's fallback: a candidate that is not minimal is thrown away."""
    draw = automata._draw
    calls = []

    def first_a_duplicate(rng):
        a = draw(rng)
        if calls:
            calls.append(a)
            return a
        # Make state 1 an exact copy of state 0 (rows point at the same targets), so the
        # two are equivalent and the automaton is not minimal.
        transitions, outputs = a.transitions.copy(), a.outputs.copy()
        transitions[1], outputs[1] = transitions[0], outputs[0]
        calls.append(Automaton(transitions, outputs, a.start))
        return calls[-1]

    monkeypatch.setattr(automata, "_draw", first_a_duplicate)
    a = make_automaton(3, 7)
    assert len(calls) == 2 and a is calls[1]
    assert not is_minimal(calls[0].transitions, calls[0].outputs)


def small_automaton() -> Automaton:
    """Two states; input 0 toggles the state, input 1 keeps it; every other input keeps it.
    Output: on input 0, the state being left (0 or 1); on input 1 the constant 5; on every
    other input 13."""
    transitions = np.zeros((2, N_INPUTS), dtype=int)
    transitions[0] = 0
    transitions[1] = 1
    transitions[0, 0], transitions[1, 0] = 1, 0
    outputs = np.full((2, N_INPUTS), 13)
    outputs[0, 0], outputs[1, 0] = 0, 1
    outputs[:, 1] = 5
    return Automaton(transitions, outputs, start=1)


def test_hand_made_trace():
    a = small_automaton()
    # states: 1 -0-> 0 -1-> 0 -0-> 1 -7-> 1 -0-> 0 -38-> 0
    inputs = np.array([0, 1, 0, 7, 0, 38])
    assert run_automaton(a, inputs).tolist() == [1, 5, 0, 13, 1, 13]


def step_loop(a: Automaton, inputs: list[int]) -> list[int]:
    table_t, table_o = a.transitions.tolist(), a.outputs.tolist()
    state, out = a.start, []
    for x in inputs:
        out.append(table_o[state][x])
        state = table_t[state][x]
    return out


@pytest.mark.parametrize("index", range(5))
def test_run_matches_a_plain_step_loop(index):
    a = make_automaton(42, index)
    inputs = random_inputs(np.random.default_rng(index), 50, 30)
    outputs = run_automaton(a, inputs)
    assert outputs.shape == (50, 30) and outputs.dtype == np.int32
    for seq, out in zip(inputs.tolist(), outputs.tolist()):
        assert out == step_loop(a, seq)


def test_run_batch_shapes():
    a = make_automaton(1, 2)
    inputs = random_inputs(np.random.default_rng(0), 6, 9)
    flat = run_automaton(a, inputs)
    np.testing.assert_array_equal(run_automaton(a, inputs.reshape(2, 3, 9)).reshape(6, 9), flat)
    np.testing.assert_array_equal(run_automaton(a, inputs[4]), flat[4])


@pytest.mark.parametrize("bad", [np.array([0, 39]), np.array([-1]), np.array([0.0, 1.0])])
def test_run_rejects_bad_inputs(bad):
    with pytest.raises(ValueError, match="inputs"):
        run_automaton(small_automaton(), bad)


def test_random_inputs():
    inputs = random_inputs(np.random.default_rng(0), 300, 40)
    assert inputs.shape == (300, 40) and inputs.dtype == np.int32
    counts = np.bincount(inputs.ravel(), minlength=N_INPUTS)
    assert counts.size == N_INPUTS
    expected = inputs.size / N_INPUTS
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
    with pytest.raises(ValueError, match="n_sequences"):
        random_inputs(np.random.default_rng(0), 0, 5)
    with pytest.raises(ValueError, match="length"):
        random_inputs(np.random.default_rng(0), 5, 0)


def test_dict_round_trip_through_json():
    a = make_automaton(9, 3)
    text = json.dumps(to_dict(a))
    b = from_dict(json.loads(text))
    np.testing.assert_array_equal(b.transitions, a.transitions)
    np.testing.assert_array_equal(b.outputs, a.outputs)
    assert b.start == a.start
    with pytest.raises(ValueError, match="start"):
        from_dict({"transitions": [[0] * N_INPUTS], "outputs": [[0] * N_INPUTS]})


def test_stack_pads_and_round_trips():
    listed = make_automata(11, 6)
    stacked = stack_automata(listed)
    s_max = max(a.n_states for a in listed)
    assert stacked["transitions"].shape == (6, s_max, N_INPUTS)
    assert stacked["outputs"].shape == (6, s_max, N_INPUTS)
    assert stacked["n_states"].tolist() == [a.n_states for a in listed]
    assert stacked["start"].tolist() == [a.start for a in listed]
    for array in stacked.values():
        assert array.dtype == np.int32
    for k, a in enumerate(listed):
        assert (stacked["transitions"][k, a.n_states :] == -1).all()
        assert (stacked["outputs"][k, a.n_states :] == -1).all()
    for a, b in zip(listed, unstack_automata(stacked)):
        assert to_dict(a) == to_dict(b)
    with pytest.raises(ValueError, match="empty"):
        stack_automata([])


def test_tables_are_read_only_int32_copies():
    transitions = np.zeros((2, N_INPUTS), dtype=np.int64)
    a = Automaton(transitions, np.zeros((2, N_INPUTS), dtype=np.int64), 0)
    transitions[0, 0] = 1  # the caller's array is not the automaton's
    assert a.transitions[0, 0] == 0
    assert a.transitions.dtype == np.int32
    with pytest.raises(ValueError):
        a.transitions[0, 0] = 1


@pytest.mark.parametrize(
    ("transitions", "outputs", "start", "argument"),
    [
        (np.zeros((2, 38)), np.zeros((2, 38)), 0, "transitions"),
        (np.zeros((2, N_INPUTS), int), np.zeros((3, N_INPUTS), int), 0, "outputs"),
        (np.full((2, N_INPUTS), 2), np.zeros((2, N_INPUTS), int), 0, "transitions"),
        (np.zeros((2, N_INPUTS), int), np.full((2, N_INPUTS), 14), 0, "outputs"),
        (np.zeros((2, N_INPUTS), int), np.zeros((2, N_INPUTS), int), 2, "start"),
        (np.zeros((2, N_INPUTS), int), np.zeros((2, N_INPUTS), int), 0.5, "start"),
        (np.zeros((2, N_INPUTS)), np.zeros((2, N_INPUTS), int), 0, "transitions"),
    ],
)
def test_invalid_tables_raise(transitions, outputs, start, argument):
    with pytest.raises(ValueError, match=argument):
        Automaton(transitions, outputs, start)


@pytest.mark.parametrize(("seed", "index"), [(-1, 0), (0, -1), (0, 1.5)])
def test_bad_seed_or_index_raise(seed, index):
    with pytest.raises(ValueError, match="seed|index"):
        make_automaton(seed, index)


# --- the checker itself -------------------------------------------------------------------


def brute_force_hamiltonian(successors: list[set[int]]) -> bool:
    n = len(successors)
    for rest in itertools.permutations(range(1, n)):
        cycle = (0, *rest)
        if all(cycle[(i + 1) % n] in successors[cycle[i]] for i in range(n)):
            return True
    return False


def random_graph_table(rng, n: int, out_degree: int) -> np.ndarray:
    """A transition table whose non-self successors are out_degree random states."""
    table = np.repeat(np.arange(n)[:, None], N_INPUTS, axis=1)
    table[:, :out_degree] = rng.integers(0, n, size=(n, out_degree))
    return table


def test_checker_hamiltonian_search_agrees_with_brute_force():
    rng = np.random.default_rng(0)
    answers = []
    for _ in range(300):
        n = int(rng.integers(1, 8))
        table = random_graph_table(rng, n, int(rng.integers(1, 4)))
        successors = [set(row) - {s} for s, row in enumerate(table.tolist())]
        expected = n == 1 or brute_force_hamiltonian(successors)
        cycle = find_hamiltonian_cycle(table)
        assert (cycle is not None) == expected
        if cycle is not None:
            assert is_hamiltonian_cycle(table, cycle)
        answers.append(expected)
    assert 50 < sum(answers) < 250  # both answers were exercised


def test_checker_finds_a_planted_cycle_in_sparse_large_graphs():
    rng = np.random.default_rng(1)
    for _ in range(10):
        n = 48
        table = random_graph_table(rng, n, 2)
        order = rng.permutation(n)
        table[order, 0] = np.roll(order, -1)
        cycle = find_hamiltonian_cycle(table)
        assert cycle is not None and is_hamiltonian_cycle(table, cycle)


def test_checker_rejects_graphs_without_a_cycle():
    n = 20
    chain = np.repeat(np.arange(n)[:, None], N_INPUTS, axis=1)
    chain[:-1, 0] = np.arange(1, n)  # 0 -> 1 -> ... -> 19, no way back
    assert not has_hamiltonian_cycle(chain)
    # Two cycles joined only one way: not strongly connected.
    two = np.repeat(np.arange(n)[:, None], N_INPUTS, axis=1)
    two[:10, 0] = np.roll(np.arange(10), -1)
    two[10:, 0] = np.roll(np.arange(10, 20), -1)
    two[0, 1] = 10
    assert not has_hamiltonian_cycle(two)
    # A state with two ways in that every other state needs: a "bow tie".
    bow = np.repeat(np.arange(5)[:, None], N_INPUTS, axis=1)
    for s, t in [(0, 1), (1, 0), (0, 2), (2, 0), (0, 3), (3, 4), (4, 0)]:
        bow[s, t] = t
    assert not has_hamiltonian_cycle(bow)
    assert has_hamiltonian_cycle(np.roll(np.repeat(np.arange(7)[:, None], 3, axis=1), -1, 0))


def test_checker_is_total():
    assert is_total(np.zeros((3, N_INPUTS), dtype=int))
    assert not is_total(np.zeros((3, N_INPUTS - 1), dtype=int))
    assert not is_total(np.full((3, N_INPUTS), 3))
    assert not is_total(np.full((3, N_INPUTS), -1))
    assert not is_total([[0] * N_INPUTS, [0] * (N_INPUTS - 1)])
    assert not is_total(np.zeros((2, N_INPUTS)))  # floats are not states
    assert not is_total(np.zeros((0, N_INPUTS), dtype=int))


def test_checker_hidden_state():
    rng = np.random.default_rng(0)
    n = 16
    transitions = rng.integers(0, n, size=(n, N_INPUTS))
    outputs = rng.integers(0, N_OUTPUTS, size=(n, N_INPUTS))
    # All output rows distinct: each state shows in its output row, nothing hidden.
    assert not has_hidden_state(transitions, outputs)
    shared = outputs.copy()
    shared[5] = shared[3]
    assert has_hidden_state(transitions, shared)
    # A true duplicate of state 3 is not a hidden state but a redundant one.
    duplicate = transitions.copy()
    duplicate[5] = duplicate[3]
    assert not is_minimal(duplicate, shared)
    assert not has_hidden_state(duplicate, shared)
    # As many states as distinct outputs: not hidden, even with shared rows.
    few_out = np.repeat(np.arange(14)[:, None], N_INPUTS, axis=1)
    few_out[1, 0] = 0  # state 1 emits 0 and 1; still 14 symbols for 14 states
    few_trans = np.repeat(np.roll(np.arange(14), -1)[:, None], N_INPUTS, axis=1)
    assert not has_hidden_state(few_trans, few_out)


def test_checker_distinguishes_by_longer_sequences():
    # Every state emits 0 except state 3, which emits 1; 0 -> 2 -> 2 ..., 1 -> 3 -> 3 ...
    # So 0 and 1 differ only from the second step on, and 0 and 2 never differ.
    transitions = np.array([[2] * N_INPUTS, [3] * N_INPUTS, [2] * N_INPUTS, [3] * N_INPUTS])
    outputs = np.zeros((4, N_INPUTS), dtype=int)
    outputs[3] = 1
    pairs = distinguishable_pairs(transitions, outputs)
    assert pairs == {(0, 1), (0, 3), (1, 2), (1, 3), (2, 3)}
    assert not is_minimal(transitions, outputs)
    outputs[2, 5] = 2  # now state 2 differs from 0 on input 5
    assert is_minimal(transitions, outputs)
