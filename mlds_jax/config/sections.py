"""The sections of a config besides `[network]`: the recipe (how every net trains, with the
values that may vary per net or per task), run options (how this process works), and the
DS2 trigger, DS3 automata and DS4 images tables; `ConfigError` for a bad key or value.
"""

from __future__ import annotations

import dataclasses
import math

from mlds_jax.tasks.triggers import check_trigger


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
    # Added to the diagonal of weight_hh's candidate block (GRU n, LSTM g). Negative: a unit
    # whose gate lets the candidate in takes the sign opposite to its own (a toggle).
    candidate_self_weight: float = 0.0
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
    # > 0: each bit of a written byte is 1 with chance q, q growing geometrically from this
    # to 1/2 (uniform bytes): sparse bytes first, so that a toggle starts as a latch.
    start_bit_density: float = 0.0
    # > 0: only the lowest k bits of a written byte vary (the others 0), k growing from this
    # to 8: Parity starts as SimpleXOR's bit-0 toggle and gains one bit per level.
    start_data_bits: float = 0.0
    # DS3: > 0: input symbols are drawn from the first k of the 39 only, k growing from this
    # to 39 in whole symbols: the net learns the transitions of a few inputs first.
    start_symbols: float = 0.0
    start_idle_noise: float = 1.0  # chance that an idle step's data lines carry noise
    curriculum_mix: float = 0.0  # share of every epoch's sequences drawn from the full task
    # DS2: share of training sequences that carry the trigger, and (stream only) of those
    # that carry a near miss: one trigger byte wrong, or an idle step inside it.
    trigger_fraction: float = 0.1
    near_miss_fraction: float = 0.0
    # DS2, stream only: each of the 3 steps after a written trigger (its inverted window) is
    # made a write with this chance (else it stays as drawn), so that more inverted steps
    # show a new byte inverted rather than the trigger's last byte held.
    trigger_window_writes: float = 0.0
    # Stream only: each idle step of a training sequence becomes a write with this chance
    # (validation keeps write_probability), so a 16-step sequence holds more of Parity's
    # flips and SimpleXOR's toggles than a net can count.
    extra_writes: float = 0.0
    # > 0: a net not converged this many epochs after its (re)start starts again from a new
    # init drawn from (seed, n, restart k), optimiser and curriculum from their start, unless
    # fewer than this many epochs are left before the cap (the last start trains to the cap).
    # The epoch count runs on. The store keeps the last start's initial weights and how many
    # restarts each net took (per_net/restarts).
    restart_epochs: float = 0.0

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
        if not 0 <= self.start_bit_density <= 0.5:
            raise ConfigError(f"recipe.start_bit_density must be in [0, 0.5], got "
                              f"{self.start_bit_density}")
        if not (self.start_data_bits == 0 or 1 <= self.start_data_bits <= 8):
            raise ConfigError(f"recipe.start_data_bits must be 0 (off) or in [1, 8], got "
                              f"{self.start_data_bits}")
        if not (self.start_symbols == 0 or 1 <= self.start_symbols <= 39):
            raise ConfigError(f"recipe.start_symbols must be 0 (off) or in [1, 39], got "
                              f"{self.start_symbols}")
        if self.curriculum_mix > MAX_MIX:
            raise ConfigError(f"recipe.curriculum_mix must be at most {MAX_MIX} (the last "
                              f"quarter of every epoch's sequences is at the net's level)")
        for name in ("start_idle_noise", "curriculum_mix", "trigger_fraction",
                     "near_miss_fraction", "trigger_window_writes", "extra_writes",
                     "curriculum_pass"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"recipe.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.trigger_fraction + self.near_miss_fraction > 1:
            raise ConfigError("recipe.trigger_fraction + recipe.near_miss_fraction must be <= 1")
        for name in ("warmup_epochs", "clip_norm", "weight_decay", "chrono_max", "recurrent_gain",
                     "input_gain", "head_gain", "decay_half_life", "curriculum_epochs",
                     "curriculum_pass", "restart_epochs"):
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
                  "start_bit_density": 0.0, "start_data_bits": 0.0, "start_symbols": 0.0, "start_idle_noise": 1.0, "curriculum_mix": 0.0, "near_miss_fraction": 0.0,
                  "trigger_window_writes": 0.0, "extra_writes": 0.0}

# Recipe values that do not change any array's shape: a [sweep] may vary them from net to
# net, a [recipe.task.NAME] table per task, and the store records every net's values
# (`hyperparameters`, in this order). The cap is one of them: the loss curve is as wide as
# the largest cap. Curriculum and trigger shares vary per net only with streamed data.
SWEEPABLE = ("learning_rate", "warmup_epochs", "decay_half_life", "decay_floor", "clip_norm",
             "weight_decay", "memory_gate_bias", "chrono_max", "recurrent_gain", "input_gain",
             "head_gain", "max_epochs", "curriculum_epochs", "curriculum_pass",
             "start_length", "start_popcount", "start_bit_density", "start_data_bits",
             "start_symbols", "start_idle_noise", "curriculum_mix", "trigger_fraction", "near_miss_fraction",
             "restart_epochs", "trigger_window_writes", "extra_writes", "candidate_self_weight")
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
