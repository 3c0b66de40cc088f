"""An independent checker for the DS3 automata's guaranteed properties.

Written apart from mlds_jax.tasks.automata and sharing none of its code: it takes plain
tables (nested lists or arrays; ``transitions[s][x]`` = next state, ``outputs[s][x]`` =
output symbol) and works on Python ints, with different algorithms from the generator's
(backtracking search for the cycle, pair marking for state equivalence).
"""

from __future__ import annotations


def _rows(table) -> list[list[int]]:
    rows = table.tolist() if hasattr(table, "tolist") else table
    return [[int(v) for v in row] for row in rows]


def is_total(transitions, n_inputs: int = 39) -> bool:
    """Every state has a next state in range for each of the ``n_inputs`` symbols."""
    rows = transitions.tolist() if hasattr(transitions, "tolist") else transitions
    n = len(rows)
    if n == 0:
        return False
    for row in rows:
        if len(row) != n_inputs:
            return False
        for target in row:
            if isinstance(target, bool) or not isinstance(target, int):
                return False
            if not 0 <= target < n:
                return False
    return True


def find_hamiltonian_cycle(transitions) -> list[int] | None:
    """A directed cycle through every state once, as a list of states, or None if none.

    Exact: depth-first search for a path from state 0 (every Hamiltonian cycle passes it)
    through all states and back, trying the successor with the fewest unvisited successors
    first. A branch is cut only when it cannot be completed: an unvisited state has lost
    every way in (from the path's end or another unvisited state) or every way out (to
    another unvisited state or back to 0), or cannot be reached from the path's end through
    unvisited states; and when some unvisited state can only be entered from the path's end,
    that state must come next. So a None is a proof that no cycle exists.
    """
    rows = _rows(transitions)
    n = len(rows)
    if n == 0:
        return None
    if n == 1:
        return [0]
    succ = [0] * n  # bitmask of successors, self-loops dropped
    pred = [0] * n
    for s, row in enumerate(rows):
        for t in row:
            if t != s:
                succ[s] |= 1 << t
                pred[t] |= 1 << s

    def members(mask: int):
        while mask:
            low = mask & -mask
            mask ^= low
            yield low.bit_length() - 1

    def feasible(unvisited: int, end: int) -> bool:
        for v in members(unvisited):
            if not pred[v] & (unvisited | (1 << end)):
                return False
            if not succ[v] & (unvisited | 1):
                return False
        reached, frontier = 0, succ[end] & unvisited  # reachable through unvisited states
        while frontier:
            reached |= frontier
            step = 0
            for v in members(frontier):
                step |= succ[v]
            frontier = step & unvisited & ~reached
        return reached == unvisited

    path = [0]

    def extend(unvisited: int) -> bool:
        end = path[-1]
        if not unvisited:
            return bool(succ[end] & 1)
        allowed = unvisited | (1 << end)
        forced = [v for v in members(unvisited) if pred[v] & allowed == 1 << end]
        if len(forced) > 1:
            return False
        if forced:
            options = forced
        else:
            options = sorted(
                members(succ[end] & unvisited),
                key=lambda v: (succ[v] & unvisited).bit_count(),
            )
        for v in options:
            remaining = unvisited & ~(1 << v)
            path.append(v)
            if feasible(remaining, v) and extend(remaining):
                return True
            path.pop()
        return False

    first = ((1 << n) - 1) & ~1
    return list(path) if feasible(first, 0) and extend(first) else None


def has_hamiltonian_cycle(transitions) -> bool:
    return find_hamiltonian_cycle(transitions) is not None


def is_hamiltonian_cycle(transitions, cycle) -> bool:
    """``cycle`` visits every state exactly once and each step (and the way back) is a
    transition."""
    rows = _rows(transitions)
    n = len(rows)
    if sorted(cycle) != list(range(n)):
        return False
    return all(cycle[(i + 1) % n] in rows[cycle[i]] for i in range(n))


def distinguishable_pairs(transitions, outputs) -> set[tuple[int, int]]:
    """Pairs (p, q), p < q, that some input sequence tells apart (by pair marking).

    A pair is marked if one input gives different outputs from p and q, or if some input
    leads them to a marked pair; repeated until nothing changes.
    """
    trans, outs = _rows(transitions), _rows(outputs)
    n = len(trans)
    marked = {(p, q) for p in range(n) for q in range(p + 1, n) if outs[p] != outs[q]}
    unmarked = [(p, q) for p in range(n) for q in range(p + 1, n) if (p, q) not in marked]
    changed = True
    while changed:
        changed = False
        for p, q in list(unmarked):
            for x in range(len(trans[p])):
                a, b = trans[p][x], trans[q][x]
                if a != b and (min(a, b), max(a, b)) in marked:
                    marked.add((p, q))
                    unmarked.remove((p, q))
                    changed = True
                    break
    return marked


def is_minimal(transitions, outputs) -> bool:
    """No two distinct states behave identically on every input sequence."""
    n = len(_rows(transitions))
    return len(distinguishable_pairs(transitions, outputs)) == n * (n - 1) // 2


def has_hidden_state(transitions, outputs) -> bool:
    """The generator's hidden-state guarantee (a), (b), (c) of the automata module docstring:
    more states than distinct outputs used, two distinct states with identical output rows
    that some longer input sequence still tells apart, and no two equivalent states."""
    trans, outs = _rows(transitions), _rows(outputs)
    n = len(trans)
    used = {y for row in outs for y in row}
    if n <= len(used):
        return False
    apart = distinguishable_pairs(trans, outs)
    if len(apart) != n * (n - 1) // 2:
        return False
    return any(outs[p] == outs[q] for p in range(n) for q in range(p + 1, n))
