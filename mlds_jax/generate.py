"""One generation run: config -> data -> population trainer -> store, with progress.

The store is the only record of what is done: the run asks it which of the first
`K * per_task` nets are still pending, trains exactly those, and writes each batch of
finished nets as soon as the trainer hands it back. Killing the run loses at most the nets
in flight; rerunning the same command trains only what is missing.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mlds_jax._version import __version__
from mlds_jax.config.dataset import DatasetConfig
from mlds_jax.config.sections import SWEEPABLE, Recipe
from mlds_jax.preflight import preflight, write_error
from mlds_jax.signals import stop_signals
from mlds_jax.store.checkpoint import Checkpoints, Saved
from mlds_jax.store.dataset_store import DatasetStore
from mlds_jax.store.leases import Claims, Leases
from mlds_jax.store.rawrows import pack
from mlds_jax.store.schema import WEIGHT_ARRAYS, DamagedStoreError, StoreError
from mlds_jax.store.verify import verify as verify_store
from mlds_jax.tasks import digits
from mlds_jax.tasks.automata import make_automata, stack_automata
from mlds_jax.train import models, vision
from mlds_jax.train.data import (
    TaskData,
    make_automaton_dataset_data,
    make_dataset_data,
    make_trigger_dataset_data,
)
from mlds_jax.train.population import FinishedNets, Population, choose_slots
from mlds_jax.train.step import EMPTY


def task_data(cfg: DatasetConfig) -> list[TaskData] | digits.DigitsSplit:
    """Every task's fixed data: one TaskData per validation set (`cfg.accuracy_names`),
    all sharing the training set; DS4: the digits split."""
    if cfg.images is not None:
        return vision.split_of(cfg.seed)
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
                                  trigger_fraction=cfg.recipe.trigger_fraction, **sizes)
    return [d.clean(), d.triggered()]


def store_attrs(cfg: DatasetConfig) -> dict:
    """Group attributes that describe the dataset (see the store's docs)."""
    extra = {}
    if cfg.images is not None:
        extra["trigger_families"] = list(digits.FAMILIES)
        extra["trigger_mappings"] = list(digits.MAPPINGS)
        extra["held_out_families"] = list(digits.HELD_OUT)
        extra["trigger_scheme"] = ("net n's trigger: mlds_jax.tasks.digits.draw_trigger(seed, n,"
                                   " train labels); triggered(x) = (1 - alpha mask) (offset + "
                                   "scale x) + alpha mask pattern")
    return {**extra,
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
    DS3: every automaton's transition and output tables, start state and state count.
    DS4: the digits split (rows of sklearn's load_digits in the training and test sets)."""
    if cfg.images is not None:
        split = vision.split_of(cfg.seed)
        return {"digits_train_index": split.train_index, "digits_test_index": split.test_index}
    if cfg.automata is None:
        return {}
    stacked = stack_automata(make_automata(cfg.seed, cfg.automata.count))
    return {f"automaton_{k}": v for k, v in stacked.items()}


def open_store(cfg: DatasetConfig, out: str | Path, n_nets: int, overwrite: bool = False):
    defaults = _recipe_defaults()
    return DatasetStore.open_or_create(
        out,
        n_nets=n_nets,
        n_params=models.num_params(cfg.network),
        n_log=cfg.max_cap,
        n_accuracies=len(cfg.accuracy_names),
        n_hyper=len(SWEEPABLE),
        attrs=store_attrs(cfg),
        chunk_rows=cfg.run.chunk_rows,
        overwrite=overwrite,
        tables=dataset_tables(cfg),
        per_net=per_net_declared(cfg),
        # A recipe value added since a store was written stands there for its default,
        # which is what the older version did: such a store is resumed, not refused.
        absent={f"recipe.{name}": value for name, value in defaults.items()},
        absent_columns={name: value for name, value in defaults.items() if name in SWEEPABLE},
    )


def _recipe_defaults() -> dict:
    """Every recipe value's default (those with a plain one)."""
    return {f.name: f.default for f in dataclasses.fields(Recipe)
            if f.default is not dataclasses.MISSING}


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
        seq_steps=done.seq_steps,
        per_net=per_net_columns(cfg, done.net_id, done.restarts),
    )


# Declared when a recipe lets nets restart (recipe.restart_epochs): how many each took.
RESTART_COLUMNS = {"restarts": ("i4", ())}


def per_net_declared(cfg: DatasetConfig) -> dict[str, tuple] | None:
    """The dataset's own per-net arrays, name -> (dtype, row shape): DS4's trigger spec,
    and the restart count where the recipe restarts nets."""
    declared = dict(digits.TRIGGER_COLUMNS) if cfg.images is not None else {}
    if cfg.restarts_nets:
        declared.update(RESTART_COLUMNS)
    return declared or None


def per_net_columns(cfg: DatasetConfig, net_ids, restarts) -> dict[str, np.ndarray] | None:
    """The dataset's own per-net arrays of `net_ids` (`per_net_declared`); `restarts` (R,)
    as the trainer counted them."""
    columns = {}
    if cfg.images is not None:
        columns.update(digits.trigger_columns(cfg.seed, net_ids, cfg.images.poison,
                                              vision.split_of(cfg.seed).train_labels))
    if cfg.restarts_nets:
        columns["restarts"] = np.asarray(restarts, np.int32)
    return columns or None


@dataclasses.dataclass(frozen=True)
class RunReport:
    """What a run did."""

    total: int  # nets in the requested tier (or in --ids)
    already_stored: int  # finished before this run started
    trained: int  # finished and written by this run
    slots: int  # nets trained at once (0 when there was nothing to do)
    seconds: float
    taken_over: int = 0  # chunks claimed from a dead writer's expired lease
    dropped: int = 0  # nets trained but not written: their chunk's lease was lost
    resumed: int = 0  # nets that went on from a checkpoint
    checkpoints: int = 0  # checkpoints saved
    checkpoint_seconds: float = 0.0  # time spent saving them


def generate(
    cfg: DatasetConfig,
    out: str | Path,
    per_task: int,
    *,
    ids: tuple[int, int] | None = None,
    overwrite: bool = False,
    on_start: Callable[[int, int, int], None] | None = None,
    on_progress: Callable[[FinishedNets], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    on_repair: Callable[[list[int], str], None] | None = None,
    on_wait: Callable[[int], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> RunReport:
    """Make sure the first `num_tasks * per_task` nets of the dataset (of them, ids in
    `[ids[0], ids[1])`) are in the store at `out`, together with any other writers.

    `on_start(total, already_stored, slots)` is called once before training;
    `on_progress(finished)` after every batch of nets is safely written;
    `on_step(running, max_epoch)` after every compiled training step;
    `on_repair(ids, reason)` when finished rows that fail `mlds verify` go back to pending;
    `on_wait(nets)` while the only work left is held by other writers;
    `on_note(line)` for what the user should know (a checkpoint resumed or ignored).

    Before anything is written the run checks it can finish (`preflight`: disk and memory);
    before training, that the store is writable. Work is claimed a chunk at a time
    (`mlds_jax.store.leases`), so any number of runs may fill one store at once; a run waits for
    the others' chunks to be finished (or takes them over when a writer dies), so when it
    returns every net asked for is stored. Finished rows are checked (`verify`) before and
    after training: a damaged row is trained again, never counted as done. The store is
    packed by the run that finds it complete. StoreError (one line) for what the user must
    fix.

    The phases, in order: `preflight`, `_open_run` (store, range, leases, checkpoints),
    `_adopt_and_repair` (claims), `_train_until_stored` (the population, with
    `_train_claimed` and `_repair_round`), `_pack_if_complete`.
    """
    if per_task < 1:
        raise ValueError(f"--per-task must be positive, got {per_task}")
    t0 = time.perf_counter()
    n_tier = cfg.num_tasks * per_task
    preflight(cfg, out, n_tier, overwrite)
    run = _open_run(cfg, out, n_tier, ids, overwrite, on_step=on_step, on_repair=on_repair,
                    on_note=on_note)
    saved, already, mine = _adopt_and_repair(run)
    slots = choose_slots(cfg, len(mine)) if len(mine) else 0
    if len(mine):
        run.store.check_writable()  # before the first batch trains, not after
    if on_start:
        on_start(run.hi - run.lo, already, slots)
    resumed_nets = 0 if saved is None else len(saved.nets)
    slots = _train_until_stored(run, saved, slots, on_progress, on_wait)
    _pack_if_complete(run)
    checkpoints = run.checkpoints
    return RunReport(run.hi - run.lo, already, run.trained, slots, time.perf_counter() - t0,
                     taken_over=len(run.leases.taken_over), dropped=run.dropped,
                     resumed=resumed_nets,
                     checkpoint_seconds=checkpoints.save_seconds if checkpoints else 0.0,
                     checkpoints=checkpoints.saves if checkpoints else 0)


_REPAIR_ROUNDS = 3  # damaged rows found after training are retrained this many times


@dataclasses.dataclass
class _Run:
    """What the phases of one `generate` call share: the store, the range of ids it fills
    (`[lo, hi)`, the chunks `work`), its leases and checkpoints, and its counts."""

    cfg: DatasetConfig
    out: str | Path
    n_tier: int
    store: DatasetStore  # replaced when a repair unpacks or reopens it
    leases: Leases
    checkpoints: Checkpoints | None
    lo: int
    hi: int
    chunk_rows: int
    work: list[int]
    on_step: Callable[[int, int], None] | None = None
    on_repair: Callable[[list[int], str], None] | None = None
    on_note: Callable[[str], None] | None = None
    population: Population | None = None  # the one training now (its state is checkpointed)
    trained: int = 0
    dropped: int = 0
    repairs: int = 0

    def pending_in(self, chunks) -> np.ndarray:
        """The pending ids of this run's range that lie in `chunks`."""
        todo = self.store.pending(self.hi)
        return todo[np.isin(todo // self.chunk_rows, list(chunks)) & (todo >= self.lo)]

    def step(self, running: int, max_epoch: int) -> None:
        stop_signals.check()
        if self.on_step:
            self.on_step(running, max_epoch)

    def on_state(self, state, slot_net) -> None:
        """After a compiled step: save a checkpoint when one is due or a stop asks for it."""
        stop = stop_signals.pending in stop_signals.wait_for_checkpoint
        if (self.checkpoints.due() or stop) and (slot_net != EMPTY).any():
            epochs = np.asarray(state.epoch)
            self.checkpoints.save(self.population.export_state(state), slot_net, epochs)
        elif stop:
            self.checkpoints.delete()  # nothing in flight: an older checkpoint's nets are stored
        if stop:
            stop_signals.check(now=True)


def _open_run(cfg: DatasetConfig, out: str | Path, n_tier: int, ids, overwrite: bool,
              **callbacks) -> _Run:
    """Open phase: the store (made, extended or unpacked as needed), the ids this run fills,
    its leases and (when the recipe asks for them) its checkpoints."""
    store = prepare_store(cfg, out, n_tier, overwrite)
    chunk_rows = store.array("status").chunks[0]
    lo, hi = _checked_ids_range(ids, n_tier, chunk_rows)
    work = list(range(lo // chunk_rows, -(-hi // chunk_rows)))  # the chunks of [lo, hi)
    leases = Leases(store.path, cfg.run.lease_seconds)
    checkpoints = None
    if cfg.run.checkpoint_minutes > 0:
        checkpoints = Checkpoints(store.path, leases, cfg.identity(), cfg.run.checkpoint_minutes)
    return _Run(cfg, out, n_tier, store, leases, checkpoints, lo, hi, chunk_rows, work,
                **callbacks)


def _adopt_and_repair(run: _Run) -> tuple[Saved | None, int, np.ndarray]:
    """Claims phase, under the store's lock: adopt the checkpoint of a writer that is gone,
    send damaged rows back to pending, and see what is left. Returns (the adopted
    checkpoint, nets already stored, pending nets no other writer holds)."""
    with run.leases.locked():
        saved = run.checkpoints.adopt(run.on_note) if run.checkpoints else None
        run.store = _reset_damaged(run.store, run.on_repair, skip=run.leases.others())
        others = run.leases.others()
        todo = run.pending_in(run.work)
        mine = run.pending_in(set(run.work) - others)
    if saved is not None:  # nets written after the checkpoint was saved are not resumed
        saved.slot_net[~np.isin(saved.slot_net, todo)] = EMPTY
    return saved, run.hi - run.lo - len(todo), mine


def _train_until_stored(run: _Run, saved: Saved | None, slots: int, on_progress,
                        on_wait) -> int:
    """Population phase: claim chunks, train them, repair, until every net of the range is
    stored (by this run or another); waits for other writers' chunks. Returns the slots."""
    if run.checkpoints:
        stop_signals.wait_for_checkpoint = {signal.SIGTERM}
    run.leases.start_renewing()
    try:
        while True:
            claims = Claims(run.store, run.leases, run.work, run.lo, run.hi)
            resume = None
            if saved is not None:
                resume, saved = _resumed(run.cfg, saved, claims, run.on_note), None
            if claims.todo or resume is not None:
                slots = slots or choose_slots(run.cfg, len(run.pending_in(run.work)))
                _train_claimed(run, claims, slots, resume, on_progress)
            left, free = _repair_round(run)
            if not len(left):
                break
            if not len(free):  # the rest is another writer's: wait for it, or its expiry
                stop_signals.check(now=True)  # nothing in flight to checkpoint
                if on_wait:
                    on_wait(len(left))
                time.sleep(min(run.cfg.run.lease_seconds / 4, 5.0))
    finally:
        run.leases.release_all()
    if run.checkpoints:
        run.checkpoints.delete()  # every net it held is in the store
    return slots


def _train_claimed(run: _Run, claims: Claims, slots: int, resume, on_progress) -> None:
    """Train what `claims` holds (resuming an adopted checkpoint's state), writing each batch
    of finished nets whose chunk is still this run's as soon as it is handed back."""
    run.population = population = Population(run.cfg, task_data(run.cfg), slots)
    if resume is not None:
        try:
            resume = (population.import_state(resume[0]), resume[1])
        except ValueError as e:
            if run.on_note:
                run.on_note(f"ignoring the checkpoint: its state does not fit ({e})")
            resume = None
            claims.first = [int(n) for n in claims.in_flight] + claims.first
    for done in population.run(claims.ids(), on_step=run.step, resume=resume,
                               on_state=run.on_state if run.checkpoints else None):
        net_ids = done.net_id
        keep = claims.still_held(net_ids)
        run.dropped += int((~keep).sum())
        done = _subset(done, keep)
        # A stop waits until the rows are written and reported: none half done.
        with stop_signals.deferred():
            try:
                write_finished(run.store, run.cfg, done)
            except OSError as e:
                raise write_error(run.cfg, run.store, run.n_tier, e) from e
            run.trained += len(done)
            if on_progress:
                on_progress(done)
        claims.finished(net_ids)


def _repair_round(run: _Run) -> tuple[np.ndarray, np.ndarray]:
    """Repair phase, after each round of training: what another writer (or the disk) did
    meanwhile; rows that fail `verify` go back to pending. Returns (pending ids of the
    range, those no other writer holds)."""
    with run.leases.locked():
        before = len(run.pending_in(run.work))
        run.store = _reset_damaged(run.store, run.on_repair, skip=run.leases.others())
        run.repairs += len(run.pending_in(run.work)) > before
        others = run.leases.others()
        left = run.pending_in(run.work)
        free = run.pending_in(set(run.work) - others)
    if run.repairs > _REPAIR_ROUNDS:
        raise DamagedStoreError(f"store at {run.out}: nets {_ids_text(left)} still fail "
                                f"`mlds verify` after {_REPAIR_ROUNDS} rounds of training")
    return left, free


def _pack_if_complete(run: _Run) -> None:
    """Pack phase: the run that finds the whole store finished, with no other writer left,
    packs its weights into one memory-mappable block."""
    with run.leases.locked():
        if run.cfg.run.pack and not len(run.store.pending()) and not run.leases.others():
            if not DatasetStore.open(run.store.path, mode="r").packed:
                run.store.check_writable()
                pack(run.store.path)


def _resumed(cfg: DatasetConfig, saved: Saved, claims: Claims, on_note):
    """(state arrays, slot table) of an adopted checkpoint, its nets' chunks adopted by
    `claims`; None (with a note) when nothing is left to resume."""
    lost = claims.adopt(saved.nets)
    saved.slot_net[np.isin(saved.slot_net, lost)] = EMPTY
    nets = saved.nets
    if not len(nets):
        return None
    if on_note:
        epochs = saved.epochs[saved.slot_net != EMPTY]
        on_note(f"resuming {len(nets)} nets from a checkpoint at epochs "
                f"{int(epochs.min())}-{int(epochs.max())} (left by {saved.owner})")
    return saved.leaves, saved.slot_net


def _subset(done: FinishedNets, keep: np.ndarray) -> FinishedNets:
    if keep.all():
        return done
    return FinishedNets(**{f.name: getattr(done, f.name)[keep]
                           for f in dataclasses.fields(FinishedNets)})


def _checked_ids_range(ids, n_tier: int, chunk_rows: int) -> tuple[int, int]:
    """[lo, hi) of the nets to train: all of the tier, or `ids` cut to it; both ends on
    chunk boundaries (or hi at the tier's end), so that no two ranges share a chunk."""
    if ids is None:
        return 0, n_tier
    lo, hi = ids
    hi = min(hi, n_tier)
    if not 0 <= lo < hi:
        raise StoreError(f"--ids {lo}:{ids[1]} holds no net of this tier (0:{n_tier})")
    if lo % chunk_rows or (hi % chunk_rows and hi != n_tier):
        raise StoreError(f"--ids {lo}:{ids[1]} must start and end on multiples of the "
                         f"store's {chunk_rows} rows per chunk (or end at {n_tier}), so that "
                         f"no two writers share a chunk")
    return lo, hi


def prepare_store(cfg: DatasetConfig, out: str | Path, n_tier: int,
                   overwrite: bool) -> DatasetStore:
    """Open the store, creating it (atomically: one of several racing creators wins, the
    others open its store), then under the writers' lock extend it and unpack it if it was
    packed and has work again."""
    if overwrite or not (Path(out) / "zarr.json").is_file():
        open_store(cfg, out, n_tier, overwrite)
    with Leases(out).locked():
        _unpack_if_work_left(out, n_tier)
        return open_store(cfg, out, n_tier)


def _ids_text(ids) -> str:
    ids = [int(i) for i in ids]
    head = ", ".join(map(str, ids[:8]))
    return head + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")


def _reset_damaged(store: DatasetStore, on_repair: Callable[[list[int], str], None] | None,
                   skip: set[int] = frozenset()) -> DatasetStore:
    """Run `verify` on the store; every finished row it finds a problem with goes back to
    pending (unreadable chunks are deleted first, so zarr can rewrite them; a packed store is
    unpacked first), except in chunks `skip` (another writer's: it repairs them). Returns the
    store (reopened if unpacked). Problems no retraining fixes (shapes) and unreadable packed
    weights: DamagedStoreError. Call it under the writers' lock."""
    report = verify_store(store.path)
    shape = [p.message for p in report.problems if p.kind == "shape"]
    if shape:
        raise DamagedStoreError(f"store at {store.path} is damaged: {shape[0]}")
    rows = store.array("status").chunks[0]
    damaged = [n for n in report.damaged_rows() if n // rows not in skip]
    chunks = [(name, k) for name, k in report.unreadable_chunks() if k not in skip]
    if not damaged:
        return store
    if store.packed:
        if report.unreadable_chunks(WEIGHT_ARRAYS):
            raise DamagedStoreError(f"store at {store.path} is damaged: packed weights of nets "
                                    f"{_ids_text(damaged)} are unreadable; delete the store or "
                                    f"restore it from a copy")
        store.check_writable()
        pack(store.path, unpack=True)
    store = DatasetStore.open(store.path, mode="r+")
    store.reset_rows(damaged, chunks)
    if on_repair:
        on_repair(damaged, report.first_problem(damaged))
    return store


def _unpack_if_work_left(out: str | Path, total: int) -> None:
    """A packed store (complete when it was packed) goes back to the chunked layout the
    generator writes before it is extended or, after a partial unpack or damage, resumed. An
    unpack killed between its two renames is finished first (opening it for writing)."""
    try:
        store = DatasetStore.open(out, mode="r+")
    except StoreError:
        return  # open_or_create reports what is wrong with it
    try:
        work_left = total > store.n_nets or len(store.pending()) > 0
    except DamagedStoreError:
        work_left = True  # damaged rows are trained again (_reset_damaged)
    if store.packed and work_left:
        store.check_writable()
        pack(out, unpack=True)
