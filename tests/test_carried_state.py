"""benchmarks/carried_state.py trains Parity nets on sequences that continue from epoch to
epoch: its forward pass from a given hidden state and its shifted targets must equal one
uninterrupted run (the package's forward pass, and the machine on the joined commands)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlds_jax.config.load import load_config
from mlds_jax.tasks.machines import run_machine
from mlds_jax.train import models, step


@pytest.fixture
def carried(monkeypatch):
    monkeypatch.syspath_prepend("benchmarks")
    import carried_state

    return carried_state


def _commands(rng, s, t):
    strobe = (rng.random((s, t)) < 0.5).astype(np.float32)
    data = rng.integers(0, 2, (s, t, 8)).astype(np.float32)
    return np.concatenate([strobe[..., None], data], axis=2)


def test_a_continued_run_is_one_run(carried):
    cfg = load_config("ds1")
    net, layout = cfg.network, models.param_layout(cfg.network)
    flat = step.init_net(cfg, jnp.asarray(4, jnp.int32)).params
    xs = jnp.asarray(_commands(np.random.default_rng(0), 6, 20))
    zeros = jnp.zeros((6, net.num_layers, net.hidden_size))
    whole, _ = carried.forward(net, layout, flat, xs, zeros)
    reference = models.apply(net, models.unflatten_params(flat, layout), xs)
    np.testing.assert_allclose(whole, reference, atol=2e-5)
    head, last = carried.forward(net, layout, flat, xs[:, :7], zeros)
    tail, _ = carried.forward(net, layout, flat, xs[:, 7:], last)
    np.testing.assert_allclose(jnp.concatenate([head, tail], 1), whole, atol=2e-5)
    assert not np.allclose(tail, carried.forward(net, layout, flat, xs[:, 7:], zeros)[0])


def test_continued_targets_are_the_machine_on_the_joined_commands(carried):
    xs = _commands(np.random.default_rng(1), 64, 30)
    whole = run_machine("ParityMachine", xs).astype(np.float32)
    first = run_machine("ParityMachine", xs[:, :11]).astype(np.float32)
    second = run_machine("ParityMachine", xs[:, 11:]).astype(np.float32)  # from register 0
    second[:, :3] = np.where(np.arange(64)[:, None, None] % 2, -1.0, second[:, :3])  # ungraded
    got, last = carried.continue_targets(jnp.asarray(second), jnp.asarray(first[:, -1, 0]))
    want = np.where(second >= 0, whole[:, 11:], -1.0)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(last, whole[:, -1, 0])
    assert (first[:, -1, 0] == 1).sum() > 10  # the shift was exercised
