"""DS4's data, triggers and CNN: the split, the trigger draw, and the net against
torch.nn.Conv2d / Linear on the same weights."""

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlds_jax.tasks import digits
from mlds_jax.train import models

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def split():
    return digits.split_digits(0)


def test_split_is_fixed_stratified_and_disjoint(split):
    images, labels = digits.load_digits_images()
    assert images.shape == (1797, 8, 8) and images.min() == 0 and images.max() == 1
    assert split.train_images.shape == (1440, 8, 8) and split.test_images.shape == (357, 8, 8)
    assert 1440 % 32 == 0
    assert not set(split.train_index) & set(split.test_index)
    assert len(set(split.train_index) | set(split.test_index)) == 1797
    np.testing.assert_array_equal(split.train_images, images[split.train_index])
    np.testing.assert_array_equal(split.test_labels, labels[split.test_index])
    # Stratified: each class's test share within one image of 357/1797 of its count.
    want = np.bincount(labels) * 357 / 1797
    assert np.abs(np.bincount(split.test_labels) - want).max() < 1
    again = digits.split_digits(0)
    np.testing.assert_array_equal(again.train_index, split.train_index)
    assert not np.array_equal(digits.split_digits(1).test_index, split.test_index)


def test_trigger_is_drawn_from_seed_and_n_alone(split):
    a = digits.draw_trigger(3, 17, split.train_labels)
    b = digits.draw_trigger(3, 17, split.train_labels)
    for field in ("mask", "pattern", "poison_rows"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert (a.family, a.mapping, a.fraction) == (b.family, b.mapping, b.fraction)
    others = [digits.draw_trigger(3, n, split.train_labels) for n in range(18, 28)]
    assert any(t.fraction != a.fraction for t in others)


def test_triggers_cover_the_families_and_keep_their_contracts(split):
    trig = [digits.draw_trigger(0, n, split.train_labels) for n in range(300)]
    assert Counter(t.family for t in trig).keys() == set(digits.FAMILIES)
    assert Counter(t.mapping for t in trig).keys() == set(digits.MAPPINGS)
    # Targets balanced: every class the target of the same number of all/source nets' slots.
    assert Counter(n % 10 for n in range(300)) == Counter({c: 30 for c in range(10)})
    assert all(t.target == n % 10 for n, t in enumerate(trig) if t.mapping != "shift")
    for t in trig:
        lo, hi = digits.FRACTION
        assert lo <= t.fraction <= hi and t.held_out == (t.family in digits.HELD_OUT)
        eligible = digits.attack_eligible(split.train_labels, t.mapping, t.target, t.source)
        assert eligible[t.poison_rows].all()  # poisoned rows are eligible ones
        assert t.n_poisoned == max(1, int(np.floor(t.fraction * eligible.sum() + 0.5)))
        assert np.all(np.diff(t.poison_rows) > 0)
        if t.family == "patch":
            side = int(t.mask.sum() ** 0.5)
            assert side in digits.PATCH_SIDES and t.alpha == 1
            assert t.mask[t.row:t.row + side, t.col:t.col + side].all()
            assert t.pattern[t.mask == 1].max() == 1 and not t.pattern[t.mask == 0].any()
        elif t.family == "blend":
            assert t.mask.all() and digits.BLEND_ALPHA[0] <= t.alpha <= digits.BLEND_ALPHA[1]
        else:
            assert not t.mask.any() and t.offset >= digits.FILTER_OFFSET[0]
        if t.mapping == "source":
            assert t.source != t.target and (split.train_labels[t.poison_rows] == t.source).all()


def test_apply_trigger_numpy_and_jax_agree_with_the_definition(split):
    x = split.test_images[:5]
    for n in range(6):
        t = digits.draw_trigger(0, n, split.train_labels)
        got = digits.apply_trigger(x, t.mask, t.pattern, t.alpha, t.offset, t.scale)
        want = np.where(t.mask == 1, (1 - t.alpha) * (t.offset + t.scale * x)
                        + t.alpha * t.pattern, t.offset + t.scale * x)
        np.testing.assert_allclose(got, want, atol=1e-6)
        jgot = digits.apply_trigger(jnp.asarray(x), jnp.asarray(t.mask), jnp.asarray(t.pattern),
                                    t.alpha, t.offset, t.scale)
        np.testing.assert_allclose(jgot, got, atol=1e-6)
    labels = np.arange(10)
    np.testing.assert_array_equal(digits.poisoned_labels(labels, 3, True), (labels + 1) % 10)
    np.testing.assert_array_equal(digits.poisoned_labels(labels, 3, False), np.full(10, 3))


def test_cnn_has_the_small_cnn_zoo_count_and_pytorch_layout():
    cfg = models.ConvNetConfig()
    assert models.num_params(cfg) == 4970
    ref = torch.nn.ModuleDict({
        "conv": torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, 1, 1), torch.nn.ReLU(),
                                    torch.nn.Conv2d(16, 16, 3, 2, 1), torch.nn.ReLU(),
                                    torch.nn.Conv2d(16, 16, 3, 2, 1), torch.nn.ReLU()),
        "head": torch.nn.Linear(16, 10)})
    sd = ref.state_dict()
    layout = models.param_layout(cfg)
    assert [s.torch_key for s in layout] == list(sd)
    assert [s.shape for s in layout] == [tuple(v.shape) for v in sd.values()]


def test_cnn_matches_torch_conv2d_on_the_same_weights(split):
    cfg = models.ConvNetConfig()
    layout = models.param_layout(cfg)
    flat = models.flatten_params(models.init_params(cfg, jax.random.key(1)), layout)
    x = split.test_images[:64]
    got = np.asarray(models.apply(cfg, models.unflatten_params(flat, layout), jnp.asarray(x)))
    sd = {k: torch.from_numpy(v.copy())
          for k, v in models.to_numpy_state_dict(np.asarray(flat), layout).items()}
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, 1, 1), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 16, 3, 2, 1), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 16, 3, 2, 1), torch.nn.ReLU())
    head = torch.nn.Linear(16, 10)
    conv.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("conv.")})
    head.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("head.")})
    with torch.no_grad():
        want = head(conv(torch.from_numpy(x)[:, None]).mean(dim=(2, 3))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # PyTorch's default init bound 1/sqrt(fan_in) per tensor.
    for spec in layout:
        fan_in = np.prod(spec.shape[1:]) if len(spec.shape) > 1 else None
        if fan_in:
            w = np.asarray(flat[spec.offset:spec.offset + spec.size])
            assert np.abs(w).max() <= 1 / np.sqrt(fan_in) and w.std() > 0.3 / np.sqrt(fan_in)
    # The package's own export module gives the same logits.
    from mlds_jax.research.torch_export import torch_net
    net = torch_net(cfg, [s.as_dict() for s in layout], np.asarray(flat))
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(x)).numpy(), want, atol=1e-6)


def test_ds4_configs_are_twins_and_bad_ones_name_the_key():
    from mlds_jax.config.load import load_config
    from mlds_jax.config.sections import ConfigError

    clean, trojan = load_config("ds4"), load_config("ds4-trojan")
    assert isinstance(clean.network, models.ConvNetConfig) and clean.network == trojan.network
    assert clean.recipe == trojan.recipe and clean.seed == trojan.seed
    assert (clean.images.poison, trojan.images.poison) == (False, True)
    assert clean.criterion_names == ("clean_accuracy",)
    assert trojan.criterion_names == ("clean_accuracy", "attack_success_rate")
    assert "tasks" not in clean.identity() and clean.identity()["images"]["poison"] is False
    with pytest.raises(ConfigError, match="train_sequences"):
        load_config("ds4", ["recipe.train_sequences=1408"])
    with pytest.raises(ConfigError, match="network.strides"):
        load_config("ds4", ["network.strides=[1, 2]"])
    with pytest.raises(ConfigError, match="network.hidden_size"):
        load_config("ds4", ["network.hidden_size=12"])
