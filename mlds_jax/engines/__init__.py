"""Engines that run many writers of one store: `ray_engine` (a Ray cluster). Plain
`mlds generate` is the local engine; any number of them may share a store (mlds_jax.store.leases)."""
