"""The store room: a dataset's Zarr schema, its raw rows, the leases of many writers,
checkpoints of nets in flight and verification; numpy, zarr and orbax, nothing of training."""
