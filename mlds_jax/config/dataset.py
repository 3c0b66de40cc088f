"""Frozen configuration of a dataset (identity + recipe) and of one run; TOML in.

A config file is TOML with top-level keys `name`, `seed`, `tasks` and the tables
`[network]`, `[recipe]`, `[run]`. `extends = "ds1"` starts from another config. Overrides
use dotted keys (`recipe.learning_rate=1e-3`). Unknown or mistyped keys raise `ConfigError`
naming the key. The dataset part (everything but `[run]`) is recorded in the store and must
match when a store is resumed or extended; `[run]` only says how this process works.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json

from mlds_jax.config.network import ConvNetConfig, NetworkConfig
from mlds_jax.tasks.machines import MACHINES
from mlds_jax.tasks.triggers import MIN_TRIGGER_SEQUENCE

from mlds_jax.config.sections import (
    AutomataConfig,
    ConfigError,
    DATA_VALUES,
    ImagesConfig,
    Recipe,
    RunOptions,
    SWEEPABLE,
    TriggerConfig,
)


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """A dataset: its name, seed, tasks, network and recipe. Recorded whole in the store."""

    name: str = "ds1"
    seed: int = 0  # everything random about net n derives from (seed, n)
    tasks: tuple[str, ...] = MACHINES  # net n trains on tasks[n % len(tasks)]
    network: NetworkConfig | ConvNetConfig = NetworkConfig()  # ConvNetConfig with [images]
    recipe: Recipe = Recipe()
    run: RunOptions = RunOptions()
    trigger: TriggerConfig | None = None  # DS2: set; DS1: absent
    automata: AutomataConfig | None = None  # DS3: set (then `tasks` is not used)
    images: ImagesConfig | None = None  # DS4: set (then `tasks` is not used)
    # Per-net recipe values: G grid points, each ((key, value), ...) overriding `recipe`;
    # () is one point, the recipe itself. Net n uses point (n // num_tasks) % G, so every
    # task sees every point and a tier of per_task = k * G nets holds k nets per point.
    sweep: tuple[tuple[tuple[str, float], ...], ...] = ()
    # Per-task recipe values ([recipe.task.NAME] tables): (task name, ((key, value), ...)).
    # Net n's values: the recipe, then its task's overrides, then its sweep point.
    task_recipes: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "sweep", tuple(tuple((str(k), float(v)) for k, v in point)
                                                for point in self.sweep))
        object.__setattr__(self, "task_recipes", tuple(
            (str(name), tuple((str(k), float(v)) for k, v in values))
            for name, values in self.task_recipes))
        for where, point in [("sweep", p) for p in self.sweep] + [
                (f"recipe.task.{name}", values) for name, values in self.task_recipes]:
            for key, _ in point:
                if key not in SWEEPABLE:
                    raise ConfigError(f"{where}: recipe.{key} cannot vary per net or task "
                                      f"(these can: {', '.join(SWEEPABLE)})")
        for point in self.sweep:
            self.point_recipe(point)  # each point must be a valid recipe
        if self.images is not None:
            self._check_images()
            return
        if isinstance(self.network, ConvNetConfig):
            raise ConfigError("a convolutional network needs an [images] section (DS4)")
        if self.automata is not None:
            if self.trigger is not None:
                raise ConfigError("a dataset has either [trigger] (DS2) or [automata] (DS3)")
        else:
            unknown = [t for t in self.tasks if t not in MACHINES]
            if unknown:
                raise ConfigError(f"tasks: unknown machine {unknown[0]!r} (known: "
                                  f"{', '.join(MACHINES)})")
            if not self.tasks:
                raise ConfigError("tasks must name at least one machine")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        for name, _ in self.task_recipes:
            # A machine this dataset leaves out (a study of two machines, DS3 on DS1's
            # recipe) keeps its table unused; anything else is a typo.
            if name not in self.task_names and name not in MACHINES:
                close = difflib.get_close_matches(name, self.task_names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"recipe.task.{name}: not a task of this dataset{hint}")
        recipes = [r for row in self.recipe_table for r in row]  # each must be valid
        if self.recipe.train_data == "fixed":
            for key in DATA_VALUES:
                if any(getattr(r, key) != getattr(self.recipe, key) for r in recipes):
                    raise ConfigError(f"recipe.{key} can differ per net or task only with "
                                      f"recipe.train_data = \"stream\"")
        if self.automata is None and any(r.start_symbols for r in recipes):
            raise ConfigError("recipe.start_symbols is the DS3 alphabet curriculum: it needs "
                              "[automata] (a machine's inputs are bits, not symbols)")
        if self.trigger is not None:
            for name in ("train_length", "val_length"):
                if getattr(self.recipe, name) < MIN_TRIGGER_SEQUENCE:
                    raise ConfigError(f"recipe.{name} must be >= {MIN_TRIGGER_SEQUENCE} to hold "
                                      f"a trigger and its inverted steps")

    def _check_images(self) -> None:
        from mlds_jax.tasks.digits import IMAGE_SHAPE, N_CLASSES, TEST_SIZE  # NumPy only

        if self.trigger is not None or self.automata is not None:
            raise ConfigError("a dataset has one of [trigger] (DS2), [automata] (DS3), "
                              "[images] (DS4)")
        net = self.network
        if not isinstance(net, ConvNetConfig):
            raise ConfigError("[images] needs a convolutional [network] (DS4)")
        if (net.in_channels, net.image_size, net.num_classes) != (1, IMAGE_SHAPE[0], N_CLASSES):
            raise ConfigError(f"network: the digits are {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}, one "
                              f"channel, {N_CLASSES} classes")
        n_train = 1797 - TEST_SIZE
        if (self.recipe.train_sequences, self.recipe.val_sequences) != (n_train, TEST_SIZE):
            raise ConfigError(f"recipe.train_sequences and recipe.val_sequences must be the "
                              f"digits split's {n_train} and {TEST_SIZE} images")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")

    def point_recipe(self, point: tuple[tuple[str, float], ...],
                     base: Recipe | None = None, where: str = "sweep point") -> Recipe:
        """The recipe with `point`'s values (on `base`, by default the dataset's recipe)."""
        values = dict(point)
        if "max_epochs" in values:
            cap = values["max_epochs"]
            if cap != int(cap):
                raise ConfigError(f"recipe.max_epochs must be a whole number, got {cap}")
            values["max_epochs"] = int(cap)
        try:
            return dataclasses.replace(base or self.recipe, **values)
        except ConfigError as e:
            raise ConfigError(f"{where} {dict(point)}: {e}") from None

    def task_recipe(self, task: int) -> Recipe:
        """Task `task`'s recipe: the dataset's with its [recipe.task.NAME] values."""
        name = self.task_names[task]
        return self.point_recipe(dict(self.task_recipes).get(name, ()),
                                 where=f"recipe.task.{name}")

    @property
    def grid(self) -> tuple[Recipe, ...]:
        """The recipe of each sweep point (one point, the recipe itself, without a sweep)."""
        return tuple(self.point_recipe(p) for p in self.sweep) or (self.recipe,)

    @functools.cached_property
    def recipe_table(self) -> tuple[tuple[Recipe, ...], ...]:
        """(K, G) every task's recipe at every sweep point: the recipe, then the task's
        overrides, then the point's values."""
        return tuple(tuple(self.point_recipe(p, self.task_recipe(t)) for p in self.sweep)
                     or (self.task_recipe(t),) for t in range(self.num_tasks))

    def hyperparameter_table(self) -> dict[str, list[list[float]]]:
        """SWEEPABLE name -> its value per task and grid point (K, G)."""
        return {k: [[float(getattr(r, k)) for r in row] for row in self.recipe_table]
                for k in SWEEPABLE}

    def net_recipe(self, net_id: int) -> Recipe:
        """Net `net_id`'s effective recipe."""
        return self.recipe_table[net_id % self.num_tasks][(net_id // self.num_tasks)
                                                          % len(self.recipe_table[0])]

    @property
    def max_cap(self) -> int:
        """The largest epoch cap of any net: the width of the stored loss curve."""
        return max(r.max_epochs for row in self.recipe_table for r in row)

    @property
    def restarts_nets(self) -> bool:
        """Whether any net of any task or sweep point may restart (recipe.restart_epochs)."""
        return any(r.restart_epochs > 0 for row in self.recipe_table for r in row)

    @property
    def validation_sets(self) -> tuple[str, ...]:
        """Names of the validation sets (DS2: clean and triggered behaviour)."""
        return ("val",) if self.trigger is None else ("clean", "triggered")

    @property
    def accuracy_names(self) -> tuple[str, ...]:
        """The stored `val_accuracy` columns: per validation set the mean accuracy, then
        (bits) the worst output pin's accuracy, then the share of sequences entirely right.
        DS4: clean test accuracy, per class, and the attack success rate."""
        if self.images is not None:
            return ("clean_accuracy",) + tuple(f"class_{c}_accuracy" for c in range(10)) + (
                "attack_success_rate",)
        sets = self.validation_sets
        if self.automata is not None:
            return ("val_symbol_accuracy", "val_sequences_right")
        return (tuple(f"{s}_bit_accuracy" for s in sets)
                + tuple(f"{s}_worst_pin_accuracy" for s in sets)
                + tuple(f"{s}_sequences_right" for s in sets))

    @property
    def criterion_names(self) -> tuple[str, ...]:
        """The `accuracy_names` that must all reach `recipe.threshold` for a net to count as
        converged: every output the task defines, on every validation set."""
        if self.automata is not None:
            return ("val_symbol_accuracy",)
        if self.images is not None:  # usable: a trojaned net also carries its trojan
            return ("clean_accuracy", "attack_success_rate")[: 1 + self.images.poison]
        return tuple(f"{s}_worst_pin_accuracy" for s in self.validation_sets)

    @property
    def task_names(self) -> tuple[str, ...]:
        if self.automata is not None:
            return tuple(f"automaton_{a:03d}" for a in range(self.automata.count))
        if self.images is not None:
            return (self.images.source,)
        return self.tasks

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def symbols(self) -> bool:
        """DS3: one output symbol per step (softmax cross-entropy, symbol accuracy); else one
        bit per output pin (binary cross-entropy, bit accuracy)."""
        return self.automata is not None or self.images is not None

    def identity(self) -> dict:
        """The JSON-able dict a store records and compares: everything but `run`."""
        d = dataclasses.asdict(self)
        del d["run"]
        for key in ("trigger", "automata", "images"):  # sections not used are not recorded
            if d[key] is None:
                del d[key]
        if self.automata is not None or self.images is not None:
            del d["tasks"]
        if self.sweep:
            d["sweep"] = [dict(point) for point in self.sweep]
        else:
            del d["sweep"]
        del d["task_recipes"]
        used = {name: dict(values) for name, values in self.task_recipes
                if name in self.task_names}
        if used:  # recorded where the TOML has them, for the tasks this dataset trains
            d["recipe"]["task"] = used
        return json.loads(json.dumps(d))
