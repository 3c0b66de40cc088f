"""Stores written before a config value existed: adopting the values a newer writer added.

A newer mlds_jax may add a config value (a key of the recorded config, and a column of
``hyperparameters`` where the value is per net) whose default is what older versions did.
A store an older version made lacks both, so comparing configs alone would refuse it.
`adopt_added_values` brings such a store up to date when every key the new config adds
holds the value its absence stands for and the rest of the config is the same, so that a
writer resumes or extends it; any other difference is left for the caller's comparison to
name.

Three writes, each atomic: the attrs get a ``WIDENING`` record (the new config, column
names and the added columns' values); ``hyperparameters`` is widened and its new columns
written; the attrs get the new config and names and lose the record. A writer killed
between them leaves a store that opens (the disk checks accept the widened array while the
record is there) and that the next writer finishes. Rows keep everything they held.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from mlds_jax.store.schema import WIDENING, _first_difference


def added_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the JSON tree `new` that `old` lacks (not descending into them)."""
    out = []
    for k, v in new.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in old:
            out.append(key)
        elif isinstance(v, dict) and isinstance(old[k], dict):
            out.extend(added_keys(old[k], v, key))
    return out


def _get(tree: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _without(tree: dict, keys: list[str]) -> dict:
    tree = copy.deepcopy(tree)
    for dotted in keys:
        *parents, last = dotted.split(".")
        node = tree
        for part in parents:
            node = node[part]
        del node[last]
    return tree


def comparable(stored_config: dict, config: dict, absent: dict[str, Any]) -> dict:
    """`config` without the keys `stored_config` lacks that hold the value their absence
    stands for: what to compare a store's config with, so that a refusal names a real
    difference."""
    return _without(config, [k for k in added_keys(stored_config, config)
                             if k in absent and _get(config, k) == absent[k]])


def widening(stored: dict, attrs: dict, absent: dict[str, Any],
             absent_columns: dict[str, float]) -> dict | None:
    """The ``WIDENING`` record that brings a store's attrs `stored` to a writer's `attrs`, or
    None where there is nothing to adopt or something else differs.

    `absent`: dotted config keys a store may lack, each with the value its absence stands
    for; `absent_columns`: the same for ``hyperparameters`` columns, by name. Columns are
    only ever appended, so the stored names must begin the new ones."""
    if WIDENING in stored:
        return stored[WIDENING]
    added = added_keys(stored["config"], attrs["config"])
    old_names = list(stored["hyperparameter_names"])
    new_names = list(attrs["hyperparameter_names"])
    extra = new_names[len(old_names):]
    if (not added and not extra) or new_names[:len(old_names)] != old_names:
        return None
    if any(k not in absent or _get(attrs["config"], k) != absent[k] for k in added):
        return None
    if any(name not in absent_columns for name in extra):
        return None
    if _first_difference(stored["config"], _without(attrs["config"], added)) is not None:
        return None
    return {"config": attrs["config"], "hyperparameter_names": new_names,
            "added_keys": added, "values": [float(absent_columns[n]) for n in extra]}


def adopt_added_values(store, attrs: dict, absent: dict[str, Any],
                       absent_columns: dict[str, float]) -> bool:
    """Bring `store` (a DatasetStore open "r+") up to `attrs` where `widening` allows, or
    finish what an interrupted call began. True if the store changed (reopen it)."""
    record = widening(store.attrs, attrs, absent, absent_columns)
    if record is None:
        return False
    group = store._group
    if WIDENING not in store.attrs:
        group.attrs.update({WIDENING: record})
    names = record["hyperparameter_names"]
    old = len(names) - len(record["values"])
    hyper = store._arrays["hyperparameters"]
    if hyper.shape[1] != len(names):
        hyper.resize((hyper.shape[0], len(names)))
    if record["values"]:
        hyper[:, old:] = np.broadcast_to(np.asarray(record["values"], np.float32),
                                         (hyper.shape[0], len(record["values"])))
    done = {k: v for k, v in dict(group.attrs).items() if k != WIDENING}
    done.update(config=record["config"], hyperparameter_names=names)
    group.attrs.put(done)
    return True
