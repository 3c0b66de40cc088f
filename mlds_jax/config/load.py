"""Configs from TOML: a name in `configs/` or a path, `extends`, dotted overrides
(`recipe.learning_rate=1e-3`), and errors that name the unknown or mistyped key."""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import tomllib
import typing
from collections.abc import Iterable
from pathlib import Path

from mlds_jax.config.network import ConvNetConfig, NetworkConfig

from mlds_jax.config.dataset import DatasetConfig
from mlds_jax.config.sections import (
    AutomataConfig,
    ConfigError,
    ImagesConfig,
    Recipe,
    RunOptions,
    TriggerConfig,
)


CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


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
