"""The store room: the Zarr schema of a dataset, its raw rows, the leases of many writers, checkpoints of nets in flight and verification; numpy, zarr and orbax only, nothing of training."""
