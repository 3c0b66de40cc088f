"""benchmarks/pin_probe.py: its per-layer states are the net's own (torch.nn.GRU run whole,
the TorchNet's output), and its probe finds a planted bit and not noise."""

import numpy as np
import pytest
import torch

from mlds_jax.research.torch_export import TorchNet


@pytest.fixture
def pin_probe(monkeypatch):
    monkeypatch.syspath_prepend("benchmarks")
    import pin_probe

    return pin_probe


def test_layer_states_are_the_whole_nets_layers(pin_probe):
    torch.manual_seed(0)
    net = TorchNet("gru", 9, 12, 4, [8, 32, 8], 8, "tanh")
    xs = torch.rand(5, 20, 9).round()
    states = pin_probe.layer_states(net, xs)
    assert [name for name, _ in states] == ["gru1", "gru2", "gru3", "gru4", "head1", "head2",
                                            "head3"]
    assert [s.shape for _, s in states] == [(5, 20, 12)] * 4 + [(5, 20, 8), (5, 20, 32),
                                                                 (5, 20, 8)]
    with torch.no_grad():
        np.testing.assert_allclose(states[3][1], net.rnn(xs)[0].numpy(), atol=1e-6)
        last = net.head[-1](torch.from_numpy(states[-1][1])).numpy()
        np.testing.assert_allclose(last, net(xs).numpy(), atol=1e-6)


def test_probe_finds_a_planted_bit_and_not_noise(pin_probe):
    rng = np.random.default_rng(1)
    bit = rng.integers(0, 2, (64, 30))
    noise = rng.normal(size=(64, 30, 6))
    planted = np.concatenate([noise, (2.0 * bit - 1)[..., None] + 0.1 * noise[..., :1]], -1)
    assert pin_probe.probe_accuracy(planted, bit) == 1.0
    assert 0.4 < pin_probe.probe_accuracy(noise, bit) < 0.6
    assert pin_probe.probe_accuracy(noise, np.zeros_like(bit)) == 1.0
