"""DS3 end to end on a tiny store: automata stored with the dataset, LSTM nets trained with
softmax cross-entropy, symbol accuracy recomputed independently with PyTorch."""

import numpy as np
import pytest
import torch

import mlds_jax
from mlds_jax import generate as gen
from mlds_jax.config import ConfigError, load_config
from mlds_jax.data import make_automaton_task_data
from mlds_jax.tasks.automata import make_automaton, run_automaton
from tests.torch_reference import torch_net

TINY = ['name="ds3-tiny"', "automata.count=3", "recipe.train_sequences=64",
        "recipe.train_length=16", "recipe.val_sequences=32", "recipe.val_length=24",
        "recipe.check_every=2", "recipe.max_epochs=4", "seed=11"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds3") / "ds3.zarr"
    cfg = load_config("ds3", TINY)
    gen.generate(cfg, out, per_task=2)
    return cfg, mlds_jax.open_dataset(out)


def test_store_shapes_and_names(store):
    cfg, ds = store
    assert ds.weights.shape == (6, 136846)
    assert ds.task_names == ["automaton_000", "automaton_001", "automaton_002"]
    assert ds.attrs["accuracy_names"] == ["val_symbol_accuracy", "val_sequences_right"]
    assert ds.attrs["criterion_names"] == ["val_symbol_accuracy"]
    np.testing.assert_array_equal(np.asarray(ds.task[:]), np.arange(6) % 3)
    assert (np.asarray(ds.status[:]) > 0).all()


def test_automata_regenerate_from_the_store_alone(store):
    cfg, ds = store
    automata = ds.automata()
    assert len(automata) == 3
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 39, (4, 50))
    for a, stored in enumerate(automata):
        fresh = make_automaton(cfg.seed, a)
        np.testing.assert_array_equal(stored.transitions, fresh.transitions)
        np.testing.assert_array_equal(stored.outputs, fresh.outputs)
        assert stored.start == fresh.start
        np.testing.assert_array_equal(run_automaton(stored, inputs), run_automaton(fresh, inputs))


def test_symbol_accuracy_matches_torch(store):
    cfg, ds = store
    r = cfg.recipe
    for n in range(6):
        d = make_automaton_task_data(cfg.seed, n % 3, train_sequences=r.train_sequences,
                                     train_length=r.train_length, val_sequences=r.val_sequences,
                                     val_length=r.val_length)
        net = torch_net(cfg.network, np.asarray(ds.weights[n]))
        with torch.no_grad():
            logits = net(torch.tensor(d.val_inputs)).numpy()
        right = logits.argmax(-1) == d.val_targets.argmax(-1)  # (S, T)
        np.testing.assert_allclose(ds.val_accuracy[n], [right.mean(), right.all(axis=1).mean()],
                                   atol=1e-6)


def test_ds3_config_rules():
    with pytest.raises(ConfigError, match="either"):
        load_config("ds3", ["trigger.fraction=0.1"])
    with pytest.raises(ConfigError, match="automata.count"):
        load_config("ds3", ["automata.count=0"])
    cfg = load_config("ds3")
    assert cfg.num_tasks == 100 and cfg.symbols
    assert "tasks" not in cfg.identity() and cfg.identity()["automata"] == {"count": 100}
