import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mlds_jax.config.network import NetworkConfig
from mlds_jax.train import models
from tests.torch_reference import TorchNet, torch_net

DS1 = NetworkConfig()
DS3 = NetworkConfig(cell="lstm", input_size=39, hidden_size=64, num_layers=4,
                    head_sizes=(128,), output_size=14, activation="relu")


def test_exact_parameter_counts():
    assert models.num_params(DS1) == 4364
    assert models.num_params(DS3) == 136846
    # The layout agrees with PyTorch's own module, tensor by tensor and in order.
    for cfg in (DS1, DS3):
        ref = TorchNet(cfg).state_dict()
        layout = models.param_layout(cfg)
        assert [s.torch_key for s in layout] == list(ref)
        assert [s.shape for s in layout] == [tuple(t.shape) for t in ref.values()]
        assert sum(t.numel() for t in ref.values()) == models.num_params(cfg)


def test_init_params_match_layout_shapes_and_torch_init_bounds():
    params = models.init_params(DS1, jax.random.key(3))
    layout = models.param_layout(DS1)
    assert sum(x.size for x in jax.tree.leaves(params)) == 4364
    for spec in layout:
        leaf = np.asarray(params[spec.path[0]][spec.path[1]])
        assert leaf.shape == spec.shape
        fan_in = DS1.hidden_size if spec.path[0] == "rnn" else int(
            layout[[s.path for s in layout].index((spec.path[0], "weight"))].shape[1])
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(leaf).max() <= bound
        assert np.abs(leaf).max() > 0.5 * bound  # really uniform over the range, not zeros


def test_flatten_unflatten_roundtrip_with_leading_axes():
    layout = models.param_layout(DS1)
    keys = jax.random.split(jax.random.key(0), 3)
    stacked = jax.vmap(lambda k: models.init_params(DS1, k))(keys)
    flat = models.flatten_params(stacked, layout)
    assert flat.shape == (3, 4364)
    back = models.unflatten_params(flat, layout)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), back, stacked)
    np.testing.assert_array_equal(models.flatten_params(back, layout, xp=np), flat)


@pytest.mark.parametrize("cfg", [DS1, NetworkConfig(activation="relu"), DS3],
                         ids=["ds1-tanh", "ds1-relu", "ds3-lstm"])
def test_forward_equals_torch(cfg):
    params = models.init_params(cfg, jax.random.key(11))
    flat = np.asarray(models.flatten_params(params, models.param_layout(cfg)))
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 2, (5, 23, cfg.input_size)).astype(np.float32)
    ours = np.asarray(jax.vmap(lambda x: models.apply(cfg, params, x))(jnp.asarray(xs)))
    with torch.no_grad():
        ref = torch_net(cfg, flat)(torch.from_numpy(xs)).numpy()
    assert ours.shape == (5, 23, cfg.output_size)
    assert np.abs(ours - ref).max() <= 1e-5


def test_bad_network_config_names_the_key():
    with pytest.raises(ValueError, match="network.activation"):
        NetworkConfig(activation="swish2")
    with pytest.raises(ValueError, match="network.cell"):
        NetworkConfig(cell="rnn")
    with pytest.raises(ValueError, match="network.hidden_size"):
        NetworkConfig(hidden_size=0)
