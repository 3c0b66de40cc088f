import dataclasses

import pytest

from mlds_jax.config.dataset import DatasetConfig
from mlds_jax.config.load import CONFIG_DIR, from_dict, load_config
from mlds_jax.config.sections import ConfigError, Recipe
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


def test_sweep_as_grid_or_points(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('extends = "ds1"\n[sweep]\nlearning_rate = [1e-3, 3e-3]\nhead_gain = [1, 3]\n')
    cfg = load_config(grid)
    assert [dict(p) for p in cfg.sweep] == [
        {"learning_rate": 1e-3, "head_gain": 1.0}, {"learning_rate": 1e-3, "head_gain": 3.0},
        {"learning_rate": 3e-3, "head_gain": 1.0}, {"learning_rate": 3e-3, "head_gain": 3.0}]
    assert cfg.hyperparameter_table()["head_gain"] == [[1.0, 3.0, 1.0, 3.0]] * cfg.num_tasks
    assert cfg.identity()["sweep"] == [dict(p) for p in cfg.sweep]  # part of the identity
    points = tmp_path / "points.toml"
    points.write_text('extends = "ds1"\n[[sweep]]\n[[sweep]]\nchrono_max = 8\n'
                      '[[sweep]]\nclip_norm = 1.0\nwarmup_epochs = 2\n')
    cfg = load_config(points)
    assert [r.chrono_max for r in cfg.grid] == [0, 8, 0]
    assert [r.clip_norm for r in cfg.grid] == [0, 0, 1.0]
    assert cfg.grid[0] == cfg.recipe  # an empty point is the recipe itself
    assert "sweep" not in load_config("ds1").identity()
    assert len(load_config("ds1").grid) == 1


def test_sweep_errors_name_the_key():
    with pytest.raises(ConfigError, match="recipe.batch_size cannot vary per net"):
        load_config("ds1", ["sweep.batch_size=[16, 32]"])
    with pytest.raises(ConfigError, match="sweep point.*recipe.learning_rate must be positive"):
        load_config("ds1", ["sweep.learning_rate=[1e-3, -1]"])
    with pytest.raises(ConfigError, match="sweep.learning_rate values must be numbers"):
        load_config("ds1", ['sweep.learning_rate=["fast"]'])
    with pytest.raises(ConfigError, match="at least one value"):
        load_config("ds1", ["sweep.learning_rate=[]"])


@pytest.mark.parametrize("override, match", [
    ("recipe.learning_rate=inf", "recipe.learning_rate must be finite"),
    ("recipe.head_gain=nan", "recipe.head_gain must be finite"),
    ("recipe.clip_norm=-1", "recipe.clip_norm must be >= 0"),
    ("recipe.chrono_max=1.5", "recipe.chrono_max must be 0"),
    ("recipe.write_probability_spread=0.6", "write_probability_spread"),
])
def test_recipe_values_are_checked(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("ds1", [override])


def test_per_task_recipe_values_then_sweep(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('extends = "ds1"\n[recipe]\ntrain_data = "stream"\nmax_epochs = 1000\n'
                    '[recipe.task.ParityMachine]\nmax_epochs = 4000\nlearning_rate = 0.003\n'
                    '[sweep]\nlearning_rate = [0.01, 0.02]\n')
    cfg = load_config(path)
    parity = cfg.tasks.index("ParityMachine")
    assert cfg.max_cap == 4000
    assert cfg.net_recipe(parity).max_epochs == 4000 and cfg.net_recipe(0).max_epochs == 1000
    # The sweep point wins over the task's value; net n's point is (n // K) % G.
    assert cfg.net_recipe(parity).learning_rate == 0.01
    assert cfg.net_recipe(parity + cfg.num_tasks).learning_rate == 0.02
    table = cfg.hyperparameter_table()
    assert table["max_epochs"][parity] == [4000.0, 4000.0] and table["max_epochs"][0] == [1000.0] * 2
    # Recorded in the identity as the TOMLs have them (this file's values over ds1's table
    # for the same task; ds1's other tables kept), and read back the same.
    tables, base = cfg.identity()["recipe"]["task"], load_config("ds1").identity()["recipe"]["task"]
    assert tables == {**base, "ParityMachine": {**base["ParityMachine"], "max_epochs": 4000.0,
                                                "learning_rate": 0.003}}
    assert from_dict(cfg.identity()) == dataclasses.replace(cfg, run=from_dict(
        cfg.identity()).run)


def test_per_task_and_stream_errors_name_the_key():
    with pytest.raises(ConfigError, match="recipe.task.ParityMachin: not a task.*ParityMachine"):
        load_config("ds1", ["recipe.task.ParityMachin.max_epochs=10"])
    with pytest.raises(ConfigError, match="recipe.train_length cannot vary"):
        load_config("ds1", ["recipe.task.ParityMachine.train_length=10"])
    with pytest.raises(ConfigError, match="start_popcount needs recipe.train_data"):
        load_config("ds1", ['recipe.train_data="fixed"', "recipe.start_popcount=1"])
    with pytest.raises(ConfigError, match="trigger_fraction can differ per net or task only"):
        raw = load_config("ds2").identity()  # DS2 on fixed data, one task table only
        raw["recipe"].update(train_data="fixed", task={"ParityMachine": {"trigger_fraction": 0.5}})
        from_dict(raw)
    with pytest.raises(ConfigError, match="trigger.fraction is now recipe.trigger_fraction"):
        load_config("ds2", ["trigger.fraction=0.5"])
    with pytest.raises(ConfigError, match="max_epochs must be a whole number"):
        load_config("ds1", ["recipe.task.ParityMachine.max_epochs=10.5"])
    with pytest.raises(ConfigError, match="train_data must be one of fixed, stream"):
        load_config("ds1", ['recipe.train_data="streamed"'])
