"""DS2 is DS1 with a trigger: net n of both starts from the same weights and sees its data
in the same order (proved from small stores), and validation reports clean and triggered
accuracy separately."""

import numpy as np
import pytest
import torch

import mlds_jax
from mlds_jax import generate as gen
from mlds_jax.config.load import load_config
from mlds_jax.config.sections import ConfigError
from mlds_jax.train.data import make_trigger_task_data
from tests.torch_reference import torch_net

DS2 = ['name="ds2-smoke"', "trigger.bytes=[7, 200, 7]"]


def make(tmp_path, name, overrides):
    cfg = load_config("smoke", overrides)
    gen.generate(cfg, tmp_path / name, per_task=1)
    ds = mlds_jax.open_dataset(tmp_path / name)
    return cfg, {k: np.asarray(getattr(ds, k)[:]) for k in
                 ("weights", "initial_weights", "status", "epochs", "val_accuracy")}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pair")
    return {
        "ds1": make(tmp, "ds1", []),
        # No trigger and no near misses anywhere, the release recipe's EightBit table too.
        "ds2-none": make(tmp, "ds2-none", DS2 + [
            f"recipe.{task}{key}=0.0" for task in ("", "task.EightBitMachine.")
            for key in ("trigger_fraction", "near_miss_fraction")]),
        "ds2": make(tmp, "ds2", DS2 + ["recipe.trigger_fraction=0.5"]),
    }


def test_ds2_net_n_pairs_with_ds1_net_n(stores):
    _, ds1 = stores["ds1"]
    _, none = stores["ds2-none"]
    _, ds2 = stores["ds2"]
    # Same initial weights, bit for bit.
    np.testing.assert_array_equal(ds2["initial_weights"], ds1["initial_weights"])
    np.testing.assert_array_equal(none["initial_weights"], ds1["initial_weights"])
    # With no trigger in the training data, DS2 training IS DS1 training: same data in the
    # same order gives the same weights, so the order is paired too.
    assert np.abs(none["weights"] - ds1["weights"]).max() <= 1e-5
    # Clean validation of the pair: mean, worst pin, whole sequences (DS2 columns 0, 2, 4).
    np.testing.assert_allclose(none["val_accuracy"][:, [0, 2, 4]], ds1["val_accuracy"],
                               atol=1e-6)
    # With the trigger in half the training sequences the nets learn something else.
    assert np.abs(ds2["weights"] - ds1["weights"]).max() > 1e-3


def test_clean_and_triggered_accuracy_are_stored_separately(stores):
    cfg, ds2 = stores["ds2"]
    assert ds2["val_accuracy"].shape == (5, 6)
    r = cfg.recipe
    for n in range(5):
        d = make_trigger_task_data(cfg.seed, n, trigger=cfg.trigger.bytes,
                                   trigger_fraction=cfg.net_recipe(n).trigger_fraction,
                                   train_sequences=r.train_sequences, train_length=r.train_length,
                                   val_sequences=r.val_sequences, val_length=r.val_length,
                                   write_probability=r.write_probability)
        net = torch_net(cfg.network, ds2["weights"][n])
        with torch.no_grad():
            for col, (xs, ys) in enumerate([(d.val_inputs, d.val_targets),
                                            (d.trig_val_inputs, d.trig_val_targets)]):
                right = (net(torch.tensor(xs)).numpy() > 0) == (ys > 0.5)  # (S, T, 8)
                want = [right.mean(), right.mean(axis=(0, 1)).min(), right.all(axis=(1, 2)).mean()]
                # columns: clean, triggered bit accuracy; worst pins; sequences right
                np.testing.assert_allclose(ds2["val_accuracy"][n, [col, 2 + col, 4 + col]], want,
                                           atol=1e-6)


def test_trigger_config_is_checked():
    with pytest.raises(ConfigError, match="trigger.bytes"):
        load_config("ds2", ["trigger.bytes=[1, 2]"])
    with pytest.raises(ConfigError, match="recipe.trigger_fraction"):
        load_config("ds2", ["recipe.trigger_fraction=1.5"])
    with pytest.raises(ConfigError, match="recipe.train_length"):
        load_config("ds2", ["recipe.train_length=4"])
    cfg = load_config("ds2")
    assert cfg.accuracy_names == ("clean_bit_accuracy", "triggered_bit_accuracy",
                                  "clean_worst_pin_accuracy", "triggered_worst_pin_accuracy",
                                  "clean_sequences_right", "triggered_sequences_right")
    # Converged means every pin right at the threshold on clean AND triggered sequences.
    assert cfg.criterion_names == ("clean_worst_pin_accuracy", "triggered_worst_pin_accuracy")
