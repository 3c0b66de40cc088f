"""Weight-space symmetries of the dataset networks: hidden-unit permutations and sign flips
that leave a net's function unchanged, a canonical form, and weight matching to a reference.

Which transformations are true symmetries (each checked numerically against the model's
outputs in ``tests/test_analysis_symmetry.py``):

- **Permuting the hidden units of a recurrent layer** (GRU or LSTM): the unit's rows in
  every gate block of ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``, the columns of
  ``weight_hh``, and the next layer's input columns (the next ``weight_ih`` or the first head
  weight) move together. The zero initial state is permutation invariant.
- **Flipping the sign of a GRU unit**, h_j -> -h_j: negate the unit's rows of the candidate
  (n) gate (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``), its column in
  ``weight_hh`` (all three gates) and the next layer's input column. The sigmoid reset and
  update gates are *not* flipped (sigmoid is not odd; flipping their pre-activation changes
  the function, also tested): they only multiply, so r and z stay as they are, n = tanh(.)
  flips because tanh is odd, and h' = (1 - z) n + z h flips with it.
- **Flipping the sign of an LSTM unit**, (h_j, c_j) -> (-h_j, -c_j): negate the unit's rows
  of the cell-candidate (g) gate, its ``weight_hh`` column and the next layer's input column;
  i, f, o stay (c = f c + i tanh(g) flips, h = o tanh(c) flips).
- **Permuting the hidden units of a head layer** (any elementwise activation), and flipping
  their signs only when the activation is odd (``tanh``: negate the unit's weight row and
  bias, and the next layer's column). ReLU-like heads get permutations only (their positive
  rescalings are symmetries too but are not handled here).

A transformation of one *group* (a layer's hidden units) is ``(perm, signs)``: new unit k is
old unit ``perm[k]`` times ``signs[k]``. Everything works on flat ``(N, P)`` weight rows in
the store's layout (PyTorch ``state_dict`` order), numpy only, vectorised over nets.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

GATE_ORDER = {"gru": ("r", "z", "n"), "lstm": ("i", "f", "g", "o")}
# The gate block whose rows flip with a unit's sign (the one behind tanh).
ODD_GATE = {"gru": "n", "lstm": "g"}
# The gate whose bias orders a layer's units in the canonical form (sign-invariant).
SORT_GATE = {"gru": "z", "lstm": "f"}
ODD_ACTIVATIONS = ("tanh",)


@dataclasses.dataclass(frozen=True)
class Touch:
    """One place a group's units appear: tensor ``name`` (a layout name), along ``axis``,
    in ``blocks`` consecutive blocks of the group's width; ``odd[b]``: block b flips sign
    with the unit."""

    name: str
    axis: int
    odd: tuple[bool, ...]  # one per block


@dataclasses.dataclass(frozen=True)
class Group:
    """The hidden units of one layer and every tensor slice that moves with them."""

    name: str  # e.g. "rnn/l0", "head/0"
    width: int
    signs: bool  # whether sign flips are symmetries of this group
    touches: tuple[Touch, ...]
    sign_stat: tuple[str, int, int] | None  # (tensor, block, of blocks): an odd bias to fix signs
    sort_stat: tuple[tuple[str, int, int], ...]  # even biases summed to order the units


class Symmetries:
    """The symmetry groups of one network (the ``network`` dict of a store, or a
    ``NetworkConfig``) over its flat layout (the store's ``layout`` list)."""

    def __init__(self, network, layout):
        net = network if isinstance(network, dict) else dataclasses.asdict(network)
        self.cell = net.get("cell", "gru")
        self.layout = {s["name"] if isinstance(s, dict) else "/".join(s.path):
                       (tuple(s["shape"] if isinstance(s, dict) else s.shape),
                        int(s["offset"] if isinstance(s, dict) else s.offset))
                       for s in layout}
        self.n_params = max(off + math.prod(shape) for shape, off in self.layout.values())
        h, layers = int(net["hidden_size"]), int(net["num_layers"])
        heads = [int(x) for x in net["head_sizes"]]
        gates = GATE_ORDER[self.cell]
        g = len(gates)
        parity = tuple(gate == ODD_GATE[self.cell] for gate in gates)
        odd_block = gates.index(ODD_GATE[self.cell])
        sort_block = gates.index(SORT_GATE[self.cell])
        groups = []
        for layer in range(layers):
            nxt = f"rnn/weight_ih_l{layer + 1}" if layer + 1 < layers else "head_0/weight"
            rows = tuple(Touch(f"rnn/{t}_l{layer}", 0, parity)
                         for t in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            groups.append(Group(
                f"rnn/l{layer}", h, True,
                rows + (Touch(f"rnn/weight_hh_l{layer}", 1, (True,)), Touch(nxt, 1, (True,))),
                (f"rnn/bias_ih_l{layer}", odd_block, g),
                ((f"rnn/bias_ih_l{layer}", sort_block, g), (f"rnn/bias_hh_l{layer}", sort_block, g))))
        odd_act = net.get("activation", "tanh") in ODD_ACTIVATIONS
        for i, width in enumerate(heads):
            groups.append(Group(
                f"head/{i}", width, odd_act,
                (Touch(f"head_{i}/weight", 0, (True,)), Touch(f"head_{i}/bias", 0, (True,)),
                 Touch(f"head_{i + 1}/weight", 1, (True,))),
                (f"head_{i}/bias", 0, 1) if odd_act else None,
                ((f"head_{i}/bias", 0, 1),)))
        self.groups: tuple[Group, ...] = tuple(groups)

    # ---- views into flat rows -----------------------------------------------------------

    def tensor(self, w: np.ndarray, name: str) -> np.ndarray:
        """(N, *shape) view of tensor ``name`` in rows ``w`` (N, P)."""
        shape, off = self.layout[name]
        return w[:, off: off + math.prod(shape)].reshape((w.shape[0],) + shape)

    def _block(self, w, name, block, blocks) -> np.ndarray:
        t = self.tensor(w, name)  # (N, blocks * H)
        width = t.shape[1] // blocks
        return t[:, block * width: (block + 1) * width]

    # ---- applying a transformation ------------------------------------------------------

    def apply(self, w: np.ndarray, transforms: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Rows ``w`` (N, P) with each group's ``(perm (N, H) int, signs (N, H) +-1)`` applied:
        new unit k of a group is old unit ``perm[:, k]`` times ``signs[:, k]``. Groups not
        named stay. Returns a new float32 array."""
        w = np.array(w, np.float32, copy=True, ndmin=2)
        n = w.shape[0]
        for group in self.groups:
            if group.name not in transforms:
                continue
            perm, signs = transforms[group.name]
            perm = np.broadcast_to(np.asarray(perm, np.int64), (n, group.width))
            signs = np.broadcast_to(np.asarray(signs, np.float32), (n, group.width))
            if not group.signs and np.any(signs != 1):
                raise ValueError(f"{group.name}: sign flips are not symmetries of this layer")
            for touch in group.touches:
                shape, off = self.layout[touch.name]
                t = w[:, off: off + math.prod(shape)].reshape((n,) + shape)
                t = np.moveaxis(t, touch.axis + 1, 1)  # (N, blocks * H, ...)
                rest = t.shape[2:]
                t = t.reshape((n, len(touch.odd), group.width) + rest)
                index = perm.reshape((n, 1, group.width) + (1,) * len(rest))
                t = np.take_along_axis(t, index, axis=2)
                flip = np.where(np.array(touch.odd)[None, :, None], signs[:, None, :], 1.0)
                t = t * flip.reshape(flip.shape + (1,) * len(rest))
                t = np.moveaxis(t.reshape((n, -1) + rest), 1, touch.axis + 1)
                w[:, off: off + math.prod(shape)] = t.reshape(n, -1)
        return w

    def random_transforms(self, n: int, rng: np.random.Generator) -> dict:
        """A random symmetry per net for every group: (perm (n, H), signs (n, H))."""
        out = {}
        for g in self.groups:
            perm = np.argsort(rng.random((n, g.width)), axis=1)
            signs = rng.choice([-1.0, 1.0], (n, g.width)) if g.signs else np.ones((n, g.width))
            out[g.name] = (perm, signs.astype(np.float32))
        return out

    # ---- canonical form -----------------------------------------------------------------

    def canonical_transforms(self, w: np.ndarray) -> dict:
        """Per group: signs that make the odd bias (GRU: the candidate gate's input bias;
        LSTM: the cell gate's; tanh head: the bias) non-negative, then units sorted by
        descending even bias (GRU: update gate, input + hidden bias; LSTM: forget gate; head:
        its bias after the signs). Each statistic belongs to its own group only, so the
        groups are independent and the result does not depend on the order."""
        w = np.asarray(w, np.float32).reshape(-1, self.n_params)
        out = {}
        for g in self.groups:
            if g.sign_stat is not None and g.signs:
                signs = np.where(self._block(w, *g.sign_stat) < 0, -1.0, 1.0).astype(np.float32)
            else:
                signs = np.ones((w.shape[0], g.width), np.float32)
            key = sum(self._block(w, *s) for s in g.sort_stat)
            if g.sort_stat[0] == g.sign_stat:  # a head's bias is odd: order after the signs
                key = key * signs
            perm = np.argsort(-key, axis=1, kind="stable")
            out[g.name] = (perm, np.take_along_axis(signs, perm, axis=1))
        return out

    def canonicalize(self, w: np.ndarray) -> np.ndarray:
        """Rows ``w`` (N, P) (or one (P,) row) in canonical form: the same functions, and
        every net related to another by a symmetry lands on the same point."""
        w = np.asarray(w, np.float32)
        out = self.apply(w.reshape(-1, self.n_params), self.canonical_transforms(w))
        return out.reshape(w.shape)

    # ---- weight matching ----------------------------------------------------------------

    def _unit_features(self, w: np.ndarray, group: Group, incoming_only: bool = False
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Per unit of ``group`` in rows w (N, P): (even (N, H, De), odd (N, H, Do)): the
        unit's parameter slices that stay, and those that flip with its sign.
        ``incoming_only``: only the slices that do not depend on this group's own order or
        on later groups (input weight rows and biases), so that a forward pass in layer
        order compares like with like."""
        even, odd = [], []
        n = w.shape[0]
        for touch in group.touches:
            if incoming_only and (touch.axis != 0 or "weight_hh" in touch.name):
                continue
            t = np.moveaxis(self.tensor(w, touch.name), touch.axis + 1, 1)
            t = t.reshape((n, len(touch.odd), group.width, -1))
            for b, is_odd in enumerate(touch.odd):
                (odd if is_odd and group.signs else even).append(t[:, b])
        cat = lambda xs: (np.concatenate(xs, axis=2) if xs  # noqa: E731
                          else np.zeros((n, group.width, 0), np.float32))
        return cat(even), cat(odd)

    def align(self, w: np.ndarray, reference: np.ndarray, *, max_rounds: int = 20,
              return_transforms: bool = False):
        """Signed weight matching: rows ``w`` (N, P) moved by symmetries to be as close as
        possible (inner product of every parameter slice a unit owns) to the single
        ``reference`` row (P,). Coordinate ascent over groups, each solved exactly by a
        linear assignment (scipy) where a pair's score is its even part plus the absolute
        value of its odd part (the sign is then chosen); until nothing changes or
        ``max_rounds``. The first round goes in layer order on each unit's incoming weights
        and biases only (exact for a scrambled copy of the reference, and a good start for
        other nets); later rounds use every slice the unit owns, recurrent weights and
        outgoing columns included. Returns the aligned rows (and the composed transforms)."""
        from scipy.optimize import linear_sum_assignment

        w = np.array(w, np.float32, ndmin=2).reshape(-1, self.n_params)
        ref = np.asarray(reference, np.float32).reshape(1, self.n_params)
        total = {g.name: (np.tile(np.arange(g.width), (w.shape[0], 1)),
                          np.ones((w.shape[0], g.width), np.float32)) for g in self.groups}
        for rnd in range(max_rounds):
            changed = False
            for g in self.groups:
                ev, od = self._unit_features(w, g, incoming_only=rnd == 0)
                rev, rod = self._unit_features(ref, g, incoming_only=rnd == 0)
                even = np.einsum("nhd,kd->nhk", ev, rev[0])  # (N, H_self, H_ref)
                odd = np.einsum("nhd,kd->nhk", od, rod[0])
                score = even + np.abs(odd)
                perm = np.empty((w.shape[0], g.width), np.int64)
                signs = np.ones((w.shape[0], g.width), np.float32)
                for i in range(w.shape[0]):
                    rows, cols = linear_sum_assignment(score[i], maximize=True)
                    perm[i, cols] = rows  # ref unit cols[j] takes own unit rows[j]
                    if g.signs:
                        signs[i, cols] = np.where(odd[i, rows, cols] < 0, -1.0, 1.0)
                ident = np.arange(g.width)[None]
                moved = ~(np.all(perm == ident, axis=1) & np.all(signs == 1, axis=1))
                if moved.any():
                    changed = True
                    w = self.apply(w, {g.name: (perm, signs)})
                    p0, s0 = total[g.name]
                    total[g.name] = (np.take_along_axis(p0, perm, axis=1),
                                     np.take_along_axis(s0, perm, axis=1) * signs)
            if not changed and rnd > 0:
                break
        return (w, total) if return_transforms else w
