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
import itertools
import json
import math
import tomllib
import typing
from collections.abc import Iterable
from pathlib import Path

from mlds_jax.train.models import ConvNetConfig, NetworkConfig
from mlds_jax.tasks.machines import MACHINES
from mlds_jax.tasks.triggers import MIN_TRIGGER_SEQUENCE, check_trigger

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """A bad config file, key or value; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How every net of the dataset is trained. Defaults: see configs/ds1.toml for the reasons."""

    train_sequences: int = 2048  # fixed training set per task, shared by all its nets
    train_length: int = 32  # steps per training sequence
    val_sequences: int = 256  # fixed validation set per task
    val_length: int = 64  # longer than training: a net that only fits short sequences fails
    write_probability: float = 0.5  # share of steps on which the host writes a byte
    # > 0: each training sequence draws its own write probability in write_probability +-
    # this (validation keeps write_probability), so some sequences mostly write, some hold.
    write_probability_spread: float = 0.0
    batch_size: int = 32
    learning_rate: float = 3e-3  # Adam
    check_every: int = 5  # epochs between validation checks (also the compiled call's length)
    # What counts as learned: every output the task defines at least this right on every
    # validation set (DS1/DS2: the worst pin's bit accuracy; DS3: symbol accuracy).
    threshold: float = 0.999
    max_epochs: int = 1000  # epoch cap; also the length of the stored loss curve
    # Values below may differ from net to net ([sweep], SWEEPABLE); each is stored per net.
    warmup_epochs: float = 0.0  # learning rate rises linearly from 0 over this many epochs
    # > 0: the learning rate then halves every this many epochs, down to decay_floor x itself
    decay_half_life: float = 0.0
    decay_floor: float = 0.0
    clip_norm: float = 0.0  # clip each gradient to this global norm; 0: no clipping
    weight_decay: float = 0.0  # decoupled (AdamW), scaled by the learning rate
    # Initialisation on top of PyTorch's defaults, every recurrent layer. The memory gate is
    # the GRU's update gate z (the LSTM's forget gate f): a positive bias keeps the state.
    memory_gate_bias: float = 0.0  # added to bias_hh's memory-gate part
    chrono_max: float = 0.0  # > 1: chrono init, memory-gate bias_hh = log U(1, chrono_max - 1)
    recurrent_gain: float = 0.0  # > 0: each gate's block of weight_hh orthogonal x this gain
    # PyTorch's uniform(+-1/sqrt(fan_in)) has variance 1/(3 fan_in): each layer shrinks its
    # signal ~3x in variance. These scale every weight_ih (input_gain) and every head weight
    # (head_gain) at init; sqrt(3) = 1.732 keeps the variance (LeCun).
    input_gain: float = 1.0
    head_gain: float = 1.0
    # Training data: "fixed" (one training set per task, train_sequences of it every epoch)
    # or "stream" (epoch e's train_sequences derive from (seed, task, e) alone: the same for
    # every net of the task, never repeated, so it cannot be memorised; mlds_jax.stream).
    train_data: str = "fixed"
    # Curriculum (stream only; may differ per net). Its level rises linearly from 0 at
    # epoch 0 to 1 (the full task) at epoch curriculum_epochs; 0: the full task throughout.
    # Each value below is where its knob starts; at level f it is start + f (full - start).
    curriculum_epochs: float = 0.0
    # > 0: the level instead rises by 1/curriculum_epochs after each epoch at whose end the
    # net gets at least this share of its level's graded outputs right, on the worst output
    # (DS3: symbols), over the epoch's last sequences (drawn at its level, never the mix).
    curriculum_pass: float = 0.0
    start_length: float = 0.0  # steps graded per training sequence (0: all; grows geometrically)
    start_popcount: float = 0.0  # most set bits in a written byte (0: any byte, uniform)
    start_idle_noise: float = 1.0  # chance that an idle step's data lines carry noise
    curriculum_mix: float = 0.0  # share of every epoch's sequences drawn from the full task
    # DS2: share of training sequences that carry the trigger, and (stream only) of those
    # that carry a near miss: one trigger byte wrong, or an idle step inside it.
    trigger_fraction: float = 0.1
    near_miss_fraction: float = 0.0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"recipe.{field.name} must be finite, got {value}")
        for name in (
            "train_sequences", "train_length", "val_sequences", "val_length",
            "batch_size", "check_every", "max_epochs",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"recipe.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.write_probability <= 1.0:
            raise ConfigError(f"recipe.write_probability must be in (0, 1], got {self.write_probability}")
        spread = self.write_probability_spread
        if spread < 0 or not 0 < self.write_probability - spread <= \
                self.write_probability + spread <= 1:
            raise ConfigError(f"recipe.write_probability_spread: write_probability +- spread must "
                              f"lie in (0, 1], got {self.write_probability} +- {spread}")
        if not self.learning_rate > 0:
            raise ConfigError(f"recipe.learning_rate must be positive, got {self.learning_rate}")
        if self.train_data not in TRAIN_DATA:
            raise ConfigError(f"recipe.train_data must be one of {', '.join(TRAIN_DATA)}, got "
                              f"{self.train_data!r}")
        if self.train_data == "fixed":
            for name, off in CURRICULUM_OFF.items():
                if getattr(self, name) != off:
                    raise ConfigError(f"recipe.{name} needs recipe.train_data = \"stream\" "
                                      f"(a fixed training set has no curriculum)")
        if not 0 <= self.start_length <= self.train_length:
            raise ConfigError(f"recipe.start_length must be in [0, train_length], got "
                              f"{self.start_length}")
        if not 0 <= self.start_popcount <= 8:
            raise ConfigError(f"recipe.start_popcount must be in [0, 8], got {self.start_popcount}")
        if self.curriculum_mix > MAX_MIX:
            raise ConfigError(f"recipe.curriculum_mix must be at most {MAX_MIX} (the last "
                              f"quarter of every epoch's sequences is at the net's level)")
        for name in ("start_idle_noise", "curriculum_mix", "trigger_fraction",
                     "near_miss_fraction", "curriculum_pass"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"recipe.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.trigger_fraction + self.near_miss_fraction > 1:
            raise ConfigError("recipe.trigger_fraction + recipe.near_miss_fraction must be <= 1")
        for name in ("warmup_epochs", "clip_norm", "weight_decay", "chrono_max", "recurrent_gain",
                     "input_gain", "head_gain", "decay_half_life", "curriculum_epochs",
                     "curriculum_pass"):
            if getattr(self, name) < 0:
                raise ConfigError(f"recipe.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.decay_floor <= 1:
            raise ConfigError(f"recipe.decay_floor must be in [0, 1], got {self.decay_floor}")
        if 0 < self.chrono_max <= 2:
            raise ConfigError(f"recipe.chrono_max must be 0 (off) or above 2, "
                              f"got {self.chrono_max}")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"recipe.threshold must be in (0, 1], got {self.threshold}")
        if self.train_sequences % self.batch_size:
            raise ConfigError(
                f"recipe.train_sequences ({self.train_sequences}) must be a multiple of "
                f"recipe.batch_size ({self.batch_size})"
            )
        if self.max_epochs % self.check_every:
            raise ConfigError(
                f"recipe.max_epochs ({self.max_epochs}) must be a multiple of "
                f"recipe.check_every ({self.check_every})"
            )

    @property
    def steps_per_epoch(self) -> int:
        return self.train_sequences // self.batch_size


TRAIN_DATA = ("fixed", "stream")
MAX_MIX = 0.75  # the curriculum's full-task share leaves the last quarter at the net's level
# Curriculum and stream-only values at which they do nothing (what "fixed" data requires).
CURRICULUM_OFF = {"curriculum_epochs": 0.0, "curriculum_pass": 0.0, "start_length": 0.0, "start_popcount": 0.0,
                  "start_idle_noise": 1.0, "curriculum_mix": 0.0, "near_miss_fraction": 0.0}

# Recipe values that do not change any array's shape: a [sweep] may vary them from net to
# net, a [recipe.task.NAME] table per task, and the store records every net's values
# (`hyperparameters`, in this order). The cap is one of them: the loss curve is as wide as
# the largest cap. Curriculum and trigger shares vary per net only with streamed data.
SWEEPABLE = ("learning_rate", "warmup_epochs", "decay_half_life", "decay_floor", "clip_norm",
             "weight_decay", "memory_gate_bias", "chrono_max", "recurrent_gain", "input_gain",
             "head_gain", "max_epochs", "curriculum_epochs", "curriculum_pass",
             "start_length", "start_popcount",
             "start_idle_noise", "curriculum_mix", "trigger_fraction", "near_miss_fraction")
# Per-net values that change the training data: with a fixed training set, one per dataset.
DATA_VALUES = ("trigger_fraction",) + tuple(CURRICULUM_OFF)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How this process trains; not part of the dataset's identity."""

    slots: int = 0  # nets trained at once; 0: as many as memory_budget_mb allows
    memory_budget_mb: int = 2048  # for choosing slots when slots = 0
    chunk_rows: int = 64  # store rows per chunk along N (a new store only)
    val_batch: int = 64  # validation sequences evaluated at once per net
    # When every row of the store is finished, rewrite the weights as one block so that
    # `open_dataset(...).weights_memmap()` is one zero-copy [N, P] map (undone automatically
    # before the store is extended).
    pack: bool = True
    # How GRU nets run: "cpu-kernel" (compiled CPU kernels: each net's whole training step
    # in one call where the head's activation is tanh or relu, else the GRU layers alone;
    # about 12x faster on CPU), "xla" (lax.scan, any backend), or "auto" (the kernel where
    # it applies). Same results to float rounding, so not part of the dataset's identity.
    recurrence: str = "auto"
    # A writer holds each chunk it trains under a lease it renews every quarter of this;
    # a writer dead this long has its chunks taken over by another (mlds_jax.leases).
    lease_seconds: float = 120.0
    # Nets in flight are checkpointed (orbax) this often and on SIGTERM, and a rerun goes on
    # from there (mlds_jax.checkpoint); 0: never.
    checkpoint_minutes: float = 5.0

    def __post_init__(self):
        if self.recurrence not in ("auto", "xla", "cpu-kernel"):
            raise ConfigError(
                f"run.recurrence must be one of auto, xla, cpu-kernel, got {self.recurrence!r}"
            )
        if self.slots < 0:
            raise ConfigError(f"run.slots must be >= 0 (0: from the memory budget), got {self.slots}")
        if not self.lease_seconds > 0 or self.lease_seconds == float("inf"):
            raise ConfigError(f"run.lease_seconds must be positive and finite, got "
                              f"{self.lease_seconds}")
        if not 0 <= self.checkpoint_minutes < float("inf"):
            raise ConfigError(f"run.checkpoint_minutes must be >= 0 and finite (0: never), "
                              f"got {self.checkpoint_minutes}")
        for name in ("memory_budget_mb", "chunk_rows", "val_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"run.{name} must be positive, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class TriggerConfig:
    """DS2: the trigger written into a known share of the training sequences."""

    bytes: tuple[int, ...] = (0xA5, 0x3C, 0x0F)  # three consecutive writes of these bytes
    # (The share of training sequences that carry it is recipe.trigger_fraction.)

    def __post_init__(self):
        try:
            object.__setattr__(self, "bytes", check_trigger(self.bytes))
        except ValueError as e:
            raise ConfigError(f"trigger.bytes: {e}") from None


@dataclasses.dataclass(frozen=True)
class AutomataConfig:
    """DS3: random Mealy automata instead of machines; automaton a from (seed, a) alone."""

    count: int = 100  # tasks: automata 0 .. count-1

    def __post_init__(self):
        if self.count < 1:
            raise ConfigError(f"automata.count must be positive, got {self.count}")


@dataclasses.dataclass(frozen=True)
class ImagesConfig:
    """DS4: image classifiers (`[network]` is then a ConvNetConfig) on scikit-learn's
    bundled 8x8 digits, one fixed split (mlds_jax.tasks.digits). Every net n has a trigger
    from (seed, n); `poison` says whether its training data carries it (the trojaned twin)
    or not (the clean twin, evaluated with it)."""

    source: str = "digits"  # the only image set bundled so far
    poison: bool = False

    def __post_init__(self):
        if self.source != "digits":
            raise ConfigError(f"images.source must be 'digits', got {self.source!r}")


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


# --- loading ------------------------------------------------------------------------------

_SECTIONS = {"network": NetworkConfig, "recipe": Recipe, "run": RunOptions,
             "trigger": TriggerConfig, "automata": AutomataConfig, "images": ImagesConfig}


def _fields(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown(key: str, known: Iterable[str]) -> ConfigError:
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
    return ConfigError(f"unknown config key {key!r}{hint}")


def _coerce(key: str, value, typ):
    """Check a TOML value against a field type; ints are accepted for floats."""
    origin = typing.get_origin(typ)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        inner = typing.get_args(typ)[0]
        return tuple(_coerce(key, v, inner) for v in value)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ in (int, float, str, bool) and (
        not isinstance(value, typ) or (typ is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{key} must be {typ.__name__}, got {value!r}")
    return value


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_path(name_or_path: str | Path) -> Path:
    """A name from configs/ (`ds1`, `smoke`) or a path to a TOML file."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found")
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        names = sorted(q.stem for q in CONFIG_DIR.glob("*.toml"))
        raise ConfigError(f"no config named {str(name_or_path)!r} (known: {', '.join(names)})")
    return candidate


def _read_toml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise ConfigError(f"config {str(path)!r} extends itself")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {str(path)!r} is not valid TOML: {e}") from None
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    return _merge(_read_toml(config_path(parent), (*seen, path)), raw)


def parse_override(text: str) -> tuple[str, object]:
    """`key=value` with a TOML value (`1e-3`, `"tanh"`, `[8, 32]`); bare words are strings."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key=value")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip(), parsed


def from_dict(raw: dict) -> DatasetConfig:
    """Build a DatasetConfig from a nested dict, naming any unknown key."""
    top = _fields(DatasetConfig)
    del top["task_recipes"]  # written as [recipe.task.NAME]
    kwargs = {}
    for key, value in raw.items():
        if key not in top:
            raise _unknown(key, top)
        if key == "sweep":
            kwargs[key] = _sweep_points(value)
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a table")
            cls = _SECTIONS[key]
            if key == "network" and "images" in raw:  # DS4's nets are convolutional
                cls = ConvNetConfig
            fields = _fields(cls)
            if key == "recipe" and "task" in value:
                value = dict(value)
                kwargs["task_recipes"] = _task_recipes(value.pop("task"))
            if key == "trigger" and "fraction" in value:
                raise ConfigError("trigger.fraction is now recipe.trigger_fraction (a recipe "
                                  "value, shared by DS1 and DS2)")
            sub = {}
            for k, v in value.items():
                if k not in fields:
                    raise _unknown(f"{key}.{k}", (f"{key}.{f}" for f in fields))
                sub[k] = _coerce(f"{key}.{k}", v, fields[k])
            try:
                kwargs[key] = cls(**sub)
            except ValueError as e:  # NetworkConfig validates with plain ValueError
                raise ConfigError(str(e)) from None
        else:
            kwargs[key] = _coerce(key, value, top[key])
    if "images" in kwargs and "network" not in kwargs:
        kwargs["network"] = ConvNetConfig()
    return DatasetConfig(**kwargs)


def _number(key: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{key} values must be numbers, got {v!r}")
    return float(v)


def _task_recipes(value) -> tuple:
    """`[recipe.task.NAME]` tables: per task, recipe values that override the recipe's."""
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError("recipe.task must hold one table per task: [recipe.task.NAME]")
    return tuple((name, tuple((k, _number(f"recipe.task.{name}.{k}", v))
                              for k, v in values.items()))
                 for name, values in value.items())


def _sweep_points(value) -> tuple:
    """`[sweep]` as a table of lists (the grid of every combination, first key slowest) or
    as an array of tables `[[sweep]]` (explicit points, each overriding the recipe)."""
    def number(key, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"sweep.{key} values must be numbers, got {v!r}")
        return float(v)

    if isinstance(value, dict):
        lists = []
        for key, values in value.items():
            values = values if isinstance(values, list) else [values]
            if not values:
                raise ConfigError(f"sweep.{key} must list at least one value")
            lists.append([(key, number(key, v)) for v in values])
        return tuple(itertools.product(*lists))
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        return tuple(tuple((k, number(k, v)) for k, v in p.items()) for p in value)
    raise ConfigError("sweep must be a table of value lists ([sweep]) or an array of tables "
                      "([[sweep]])")


def load_config(name_or_path: str | Path, overrides: Iterable[str] = ()) -> DatasetConfig:
    """Read a named or TOML config, apply `key=value` overrides, validate."""
    raw = _read_toml(config_path(name_or_path))
    for text in overrides:
        key, value = parse_override(text)
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise _unknown(key, ())
        node[leaf] = value
    return from_dict(raw)
