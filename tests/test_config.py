import dataclasses

import pytest

from mlds_jax.config import CONFIG_DIR, ConfigError, DatasetConfig, Recipe, load_config
from mlds_jax.tasks.machines import MACHINES


def test_release_and_smoke_configs_load():
    ds1 = load_config("ds1")
    assert ds1.name == "ds1" and ds1.tasks == MACHINES
    assert ds1.network.activation == "tanh" and ds1.network.hidden_size == 12
    smoke = load_config("smoke")
    # smoke extends ds1: same network and machines, its own (tiny) recipe.
    assert smoke.network == ds1.network and smoke.tasks == ds1.tasks
    assert smoke.recipe.max_epochs == 10 and smoke.recipe.learning_rate == ds1.recipe.learning_rate
    assert smoke.name == "ds1-smoke"


def test_every_config_file_sets_only_known_keys():
    for path in CONFIG_DIR.glob("*.toml"):
        load_config(path)  # raises ConfigError naming any unknown key


def test_overrides_are_typed_and_validated():
    cfg = load_config("ds1", ["recipe.learning_rate=1e-3", "network.activation=relu",
                              "seed=5", "recipe.max_epochs=100", 'tasks=["ParityMachine"]'])
    assert cfg.recipe.learning_rate == 1e-3 and cfg.network.activation == "relu"
    assert cfg.seed == 5 and cfg.tasks == ("ParityMachine",)
    assert load_config("ds1", ["recipe.learning_rate=1"]).recipe.learning_rate == 1.0
    with pytest.raises(ConfigError, match="recipe.batch_size must be int"):
        load_config("ds1", ["recipe.batch_size=2.5"])
    with pytest.raises(ConfigError, match="'recipe.learnin_rate'.*recipe.learning_rate"):
        load_config("ds1", ["recipe.learnin_rate=1"])
    with pytest.raises(ConfigError, match="'recip'"):
        load_config("ds1", ["recip.learning_rate=1"])
    with pytest.raises(ConfigError, match="unknown machine 'Toaster'"):
        load_config("ds1", ['tasks=["Toaster"]'])
    with pytest.raises(ConfigError, match="key=value"):
        load_config("ds1", ["recipe.learning_rate"])


def test_recipe_consistency_checks():
    with pytest.raises(ConfigError, match="multiple of recipe.batch_size"):
        Recipe(train_sequences=100, batch_size=32)
    with pytest.raises(ConfigError, match="multiple of recipe.check_every"):
        Recipe(max_epochs=12, check_every=5)
    with pytest.raises(ConfigError, match="recipe.threshold"):
        Recipe(threshold=1.5)


def test_identity_excludes_run_options():
    cfg = load_config("ds1")
    other = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, slots=7))
    assert cfg.identity() == other.identity()
    assert "run" not in cfg.identity()
    assert cfg.identity() != dataclasses.replace(cfg, seed=1).identity()
    assert isinstance(DatasetConfig().identity()["tasks"], list)  # JSON-able


def test_toml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("recipe = [")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(bad)
    loop = tmp_path / "loop.toml"
    loop.write_text(f'extends = "{loop}"\n')
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(loop)
