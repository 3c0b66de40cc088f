"""Checkpoints of a store given by a relative path, as `mlds generate ds1 --out ds1.zarr`
gives it (orbax refuses relative paths: the run used to die at its first checkpoint)."""

import numpy as np

from mlds_jax.store.checkpoint import Checkpoints
from mlds_jax.store.leases import Leases


def test_checkpoint_of_a_store_at_a_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.zarr").mkdir()
    checkpoints = Checkpoints("s.zarr", Leases("s.zarr"), {"name": "x"}, minutes=0)
    checkpoints.save([np.arange(3.0, dtype=np.float32)], np.array([4]), np.array([2]))
    assert (checkpoints.dir / "meta.json").is_file()
