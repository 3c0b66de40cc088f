"""One generation run: config -> data -> population trainer -> store, with progress.

The store is the only record of what is done: the run asks it which of the first
`K * per_task` nets are still pending, trains exactly those, and writes each batch of
finished nets as soon as the trainer hands it back. Killing the run loses at most the nets
in flight; rerunning the same command trains only what is missing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mlds_jax import __version__, models
from mlds_jax.config import SWEEPABLE, DatasetConfig
from mlds_jax.data import (
    TaskData,
    make_automaton_dataset_data,
    make_dataset_data,
    make_trigger_dataset_data,
)
from mlds_jax.rawrows import pack
from mlds_jax.store import DatasetStore, StoreError
from mlds_jax.tasks.automata import make_automata, stack_automata
from mlds_jax.train import FinishedNets, Population, choose_slots


@dataclasses.dataclass(frozen=True)
class RunReport:
    """What a run did."""

    total: int  # nets in the requested tier
    already_stored: int  # finished before this run started
    trained: int  # finished by this run
    slots: int  # nets trained at once (0 when there was nothing to do)
    seconds: float


def task_data(cfg: DatasetConfig) -> list[TaskData]:
    """Every task's fixed data: one TaskData per validation set (`cfg.accuracy_names`),
    all sharing the training set."""
    r = cfg.recipe
    sizes = dict(train_sequences=r.train_sequences, train_length=r.train_length,
                 val_sequences=r.val_sequences, val_length=r.val_length,
                 write_probability=r.write_probability,
                 write_probability_spread=r.write_probability_spread)
    if cfg.automata is not None:
        del sizes["write_probability"], sizes["write_probability_spread"]  # uniform symbols
        return [make_automaton_dataset_data(cfg.seed, cfg.automata.count, **sizes)]
    if cfg.trigger is None:
        return [make_dataset_data(cfg.seed, cfg.tasks, **sizes)]
    d = make_trigger_dataset_data(cfg.seed, cfg.tasks, trigger=cfg.trigger.bytes,
                                  trigger_fraction=cfg.trigger.fraction, **sizes)
    return [d.clean(), d.triggered()]


def store_attrs(cfg: DatasetConfig) -> dict:
    """Group attributes that describe the dataset (see the store's docs)."""
    return {
        "dataset": cfg.name,
        "config": cfg.identity(),
        "task_names": list(cfg.task_names),
        "layout": [spec.as_dict() for spec in models.param_layout(cfg.network)],
        "accuracy_names": list(cfg.accuracy_names),
        "criterion_names": list(cfg.criterion_names),
        "hyperparameter_names": list(SWEEPABLE),
        "package_version": __version__,
        "seed_scheme": "net n: jax.random.fold_in(jax.random.key(seed[n]), n); "
        "init key fold_in(., 0), data-order key fold_in(., 1)",
    }


def dataset_tables(cfg: DatasetConfig) -> dict[str, np.ndarray]:
    """Arrays a researcher needs to regenerate the training data from the store alone.
    DS3: every automaton's transition and output tables, start state and state count."""
    if cfg.automata is None:
        return {}
    stacked = stack_automata(make_automata(cfg.seed, cfg.automata.count))
    return {f"automaton_{k}": v for k, v in stacked.items()}


def open_store(cfg: DatasetConfig, out: str | Path, n_nets: int, overwrite: bool = False):
    return DatasetStore.open_or_create(
        out,
        n_nets=n_nets,
        n_params=models.num_params(cfg.network),
        n_log=cfg.recipe.max_epochs,
        n_accuracies=len(cfg.accuracy_names),
        n_hyper=len(SWEEPABLE),
        attrs=store_attrs(cfg),
        chunk_rows=cfg.run.chunk_rows,
        overwrite=overwrite,
        tables=dataset_tables(cfg),
    )


def write_finished(store: DatasetStore, cfg: DatasetConfig, done: FinishedNets) -> None:
    store.write_rows(
        done.net_id,
        weights=done.weights,
        initial_weights=done.initial_weights,
        task=done.task,
        seed=np.full(len(done), cfg.seed, np.uint64),
        status=done.status,
        epochs=done.epochs,
        loss_curve=done.loss_curve,
        val_accuracy=done.val_accuracy,
        hyperparameters=done.hyperparameters,
    )


def generate(
    cfg: DatasetConfig,
    out: str | Path,
    per_task: int,
    *,
    overwrite: bool = False,
    on_start: Callable[[int, int, int], None] | None = None,
    on_progress: Callable[[FinishedNets], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> RunReport:
    """Make sure the first `num_tasks * per_task` nets of the dataset are in the store at `out`.

    `on_start(total, already_stored, slots)` is called once before training;
    `on_progress(finished)` after every batch of nets is safely written;
    `on_step(running, max_epoch)` after every compiled training step.
    """
    if per_task < 1:
        raise ValueError(f"--per-task must be positive, got {per_task}")
    t0 = time.perf_counter()
    total = cfg.num_tasks * per_task
    _unpack_if_work_left(out, total, overwrite)
    store = open_store(cfg, out, total, overwrite)
    todo = store.pending(total)
    slots = choose_slots(cfg, len(todo)) if len(todo) else 0
    if on_start:
        on_start(total, total - len(todo), slots)
    trained = 0
    if len(todo):
        data = task_data(cfg)
        for done in Population(cfg, data, slots).run(todo, on_step=on_step):
            write_finished(store, cfg, done)
            trained += len(done)
            if on_progress:
                on_progress(done)
    if cfg.run.pack and not len(store.pending()):
        pack(store.path)  # complete: weights become one memory-mappable block
    return RunReport(total, total - len(todo), trained, slots, time.perf_counter() - t0)


def _unpack_if_work_left(out: str | Path, total: int, overwrite: bool) -> None:
    """A packed store (complete when it was packed) goes back to the chunked layout the
    generator writes before it is extended or, after a partial unpack, resumed."""
    if overwrite or not (Path(out) / "zarr.json").is_file():
        return
    try:
        store = DatasetStore.open(out, mode="r")
    except StoreError:
        return  # open_or_create reports what is wrong with it
    if store.packed and (total > store.n_nets or len(store.pending())):
        pack(out, unpack=True)
