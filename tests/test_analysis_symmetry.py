"""Symmetries: the planted transformations leave the net's function unchanged (JAX model,
1e-5 on random inputs), the canonical form undoes any planted symmetry exactly, weight
matching recovers a scrambled copy of the reference, and what is *not* a symmetry (flipping
a sigmoid gate) is seen to change the function."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlds_jax.analysis.symmetry import Symmetries
from mlds_jax.train import models

CONFIGS = {
    "gru-tanh": models.NetworkConfig(),
    "gru-relu": models.NetworkConfig(activation="relu"),
    "lstm": models.NetworkConfig(cell="lstm", input_size=5, hidden_size=6, num_layers=2,
                                 head_sizes=(7,), output_size=3),
}


def _nets(cfg, n, seed=0):
    """n random nets, wider than PyTorch's init so that the gates saturate differently."""
    layout = models.param_layout(cfg)
    w = np.random.default_rng(seed).uniform(-0.6, 0.6, (n, models.num_params(cfg)))
    return w.astype(np.float32), layout


@functools.cache
def _forward(cfg):
    layout = models.param_layout(cfg)
    return jax.jit(jax.vmap(lambda flat, xs: models.apply(cfg, models.unflatten_params(flat, layout), xs),
                            in_axes=(0, None)))


def _outputs(cfg, layout, w, xs):
    """Logits of each row of w, one net at a time through one compiled function."""
    return np.stack([np.asarray(_forward(cfg)(jnp.asarray(row[None]), xs))[0] for row in w])


def _inputs(cfg, seed=1):
    return np.asarray(jax.random.normal(jax.random.key(seed), (4, 12, cfg.input_size)))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_planted_symmetry_keeps_the_function(name):
    cfg = CONFIGS[name]
    w, layout = _nets(cfg, 3)
    sym = Symmetries(cfg, layout)
    scrambled = sym.apply(w, sym.random_transforms(3, np.random.default_rng(0)))
    assert np.abs(scrambled - w).max() > 0.1  # it moved
    xs = _inputs(cfg)
    np.testing.assert_allclose(_outputs(cfg, layout, scrambled, xs),
                               _outputs(cfg, layout, w, xs), atol=1e-5)


def test_which_sign_flips_are_symmetries():
    """GRU: flipping a unit's whole sign (candidate rows, its columns) keeps the function;
    flipping only its reset- or update-gate rows (as if sigmoid were odd) does not. ReLU heads
    refuse sign flips."""
    cfg = CONFIGS["gru-tanh"]
    w, layout = _nets(cfg, 1)
    sym = Symmetries(cfg, layout)
    xs = _inputs(cfg)
    base = _outputs(cfg, layout, w, xs)
    signs = np.ones((1, 12), np.float32)
    signs[0, 3] = -1
    flipped = sym.apply(w, {"rnn/l1": (np.arange(12)[None], signs)})
    np.testing.assert_allclose(_outputs(cfg, layout, flipped, xs), base, atol=1e-5)
    for gate in (0, 1):  # r, z: negate unit 3's gate rows and its column downstream too
        bad = flipped.copy()
        for t in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            v = sym.tensor(bad, f"rnn/{t}_l1")
            v[:, gate * 12 + 3] *= -1
        assert np.abs(_outputs(cfg, layout, bad, xs) - base).max() > 1e-3
    relu = Symmetries(CONFIGS["gru-relu"], models.param_layout(CONFIGS["gru-relu"]))
    with pytest.raises(ValueError, match="sign flips"):
        relu.apply(w, {"head/0": (np.arange(8)[None], -np.ones((1, 8)))})


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_canonical_form_undoes_planted_symmetries(name):
    cfg = CONFIGS[name]
    w, layout = _nets(cfg, 4, seed=2)
    sym = Symmetries(cfg, layout)
    scrambled = sym.apply(w, sym.random_transforms(4, np.random.default_rng(3)))
    canon = sym.canonicalize(w)
    np.testing.assert_array_equal(sym.canonicalize(scrambled), canon)
    np.testing.assert_array_equal(sym.canonicalize(canon), canon)  # idempotent
    xs = _inputs(cfg)
    np.testing.assert_allclose(_outputs(cfg, layout, canon, xs), _outputs(cfg, layout, w, xs),
                               atol=1e-5)
    # Canonical rows of different nets differ (it is not a constant map).
    assert np.abs(canon[0] - canon[1]).max() > 0.1


@pytest.mark.parametrize("name", ["gru-tanh", "lstm"])
def test_align_recovers_a_scrambled_reference(name):
    cfg = CONFIGS[name]
    w, layout = _nets(cfg, 3, seed=4)
    sym = Symmetries(cfg, layout)
    ref = w[0]
    scrambled = sym.apply(np.repeat(ref[None], 3, 0), sym.random_transforms(3, np.random.default_rng(5)))
    noisy = scrambled + 0.05 * np.random.default_rng(6).standard_normal(scrambled.shape).astype(np.float32)
    aligned = sym.align(scrambled, ref)
    np.testing.assert_array_equal(aligned, np.repeat(ref[None], 3, 0))
    # A perturbed, scrambled copy comes back within the perturbation, and other nets keep
    # their function when aligned.
    back = sym.align(noisy, ref)
    assert np.abs(back - ref).max() < 0.3
    others = sym.align(w[1:], ref)
    xs = _inputs(cfg)
    np.testing.assert_allclose(_outputs(cfg, layout, others, xs), _outputs(cfg, layout, w[1:], xs),
                               atol=1e-5)
    # Aligned nets are at least as close to the reference as before.
    assert np.all(np.linalg.norm(others - ref, axis=1) <= np.linalg.norm(w[1:] - ref, axis=1) + 1e-4)
