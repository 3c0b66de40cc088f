"""Stores built by hand for the reader, export, card and verify tests: the real store code
and the smoke config's attrs, plausible rows, no training."""

from __future__ import annotations

import numpy as np

from mlds_jax import generate as gen
from mlds_jax.config.load import load_config
from mlds_jax.config.sections import SWEEPABLE
from mlds_jax.store.schema import STATUS_CAPPED, STATUS_CONVERGED, STATUS_DIVERGED

MAX_EPOCHS = 40  # smoke recipe with a longer cap, so epochs and loss curves vary
CHECK_EVERY = 2  # the smoke recipe's


def smoke_config(*overrides):
    return load_config("smoke", [f"recipe.max_epochs={MAX_EPOCHS}", *overrides])


def plausible_rows(cfg, ids, seed=0):
    """Rows that pass every consistency check: per task a mix of converged (epochs a
    multiple of check_every, accuracy above the threshold) and capped nets, one diverged
    net (id 7, NaN final weights), weights clustered by task."""
    ids = np.asarray(ids, np.int64)
    k, p, cap = cfg.num_tasks, gen.models.num_params(cfg.network), cfg.recipe.max_epochs
    rng = np.random.default_rng(seed)
    r = len(ids)
    task = (ids % k).astype(np.int32)
    status = np.where(rng.random(r) < 0.3 + 0.15 * task, STATUS_CAPPED, STATUS_CONVERGED)
    status[ids == 7] = STATUS_DIVERGED
    epochs = np.where(status == STATUS_CAPPED, cap,
                      CHECK_EVERY * rng.integers(1, cap // CHECK_EVERY, r)).astype(np.int32)
    epochs[status == STATUS_DIVERGED] = 3
    steps = np.arange(cap)[None, :]
    rate = 0.03 + 0.05 * rng.random((r, 1)) / (1 + task[:, None])
    loss = (0.7 * np.exp(-rate * steps) + 0.01 * rng.random((r, cap))).astype(np.float32)
    loss[steps >= epochs[:, None]] = np.nan
    acc = np.where(status == STATUS_CONVERGED, 0.999 + 0.001 * rng.random(r),
                   0.5 + 0.4 * rng.random(r)).astype(np.float32)
    acc[status == STATUS_DIVERGED] = np.nan
    # Every accuracy column alike (mean, worst pin, whole sequences): all pass the criterion.
    acc = np.repeat(acc[:, None], len(cfg.accuracy_names), axis=1)
    hyper = np.array([cfg.hyperparameter_table()[k] for k in SWEEPABLE], np.float32)  # (H, K, G)
    point = (ids // k) % len(cfg.grid)
    hyper[SWEEPABLE.index("max_epochs")] = cap  # the cap the rows were made with
    centre = np.random.default_rng(99).standard_normal((k, p)).astype(np.float32)
    weights = (centre[task] + 0.5 * rng.standard_normal((r, p))).astype(np.float32)
    weights[status == STATUS_DIVERGED] = np.nan
    return dict(weights=weights,
                initial_weights=(0.1 * rng.standard_normal((r, p))).astype(np.float32),
                task=task, seed=np.full(r, cfg.seed, np.uint64), status=status.astype(np.uint8),
                epochs=epochs, loss_curve=loss, val_accuracy=acc,
                hyperparameters=hyper[:, task, point].T,
                seq_steps=epochs.astype(np.int64) * cfg.recipe.train_sequences
                * cfg.recipe.train_length)


def build_store(path, *, n_nets=30, written=None, cfg=None, seed=0):
    """A store of ``n_nets`` rows (chunks of 4) with rows ``written`` (default: all but the
    last 3) filled with plausible_rows. Returns (DatasetStore, config, written ids)."""
    cfg = cfg or smoke_config()
    store = gen.open_store(cfg, path, n_nets=n_nets)
    ids = np.arange(n_nets - 3) if written is None else np.asarray(written, np.int64)
    if ids.size:
        store.write_rows(ids, **plausible_rows(cfg, ids, seed))
    return store, cfg, ids


# Every array a finished row fills.
ROW_ARRAYS = ("weights", "initial_weights", "task", "seed", "status", "epochs", "loss_curve",
              "val_accuracy", "hyperparameters", "seq_steps")


def read_all(path) -> dict:
    """Every row array of the store at `path`, as numpy."""
    import mlds_jax

    ds = mlds_jax.open_dataset(path)
    return {name: np.asarray(getattr(ds, name)[:]) for name in ROW_ARRAYS}


def assert_same_as(path, reference) -> None:
    """The store at `path` holds the nets of `reference` (a run that was never stopped):
    status, epochs, task, initial weights exactly, weights and loss curves to 1e-5; and it
    passes `verify` with no stray files."""
    from mlds_jax.store.verify import verify

    got, ref = read_all(path), read_all(reference)
    for name in ("status", "epochs", "task", "initial_weights"):
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    assert np.abs(got["weights"] - ref["weights"]).max() <= 1e-5
    np.testing.assert_allclose(got["loss_curve"], ref["loss_curve"], atol=1e-5)
    report = verify(path)
    assert report.ok and not report.strays, [str(p) for p in report.problems] + report.strays
