"""MLDS-JAX: datasets of thousands of tiny trained RNNs, trained at once with jax.vmap."""

from mlds_jax._version import __version__

__all__ = ["Dataset", "TaskSummary", "open_dataset", "__version__"]


def __getattr__(name: str):
    # The reader (and zarr under it) loads on first use, so `import mlds_jax` and the `mlds`
    # entry point start at once (mlds_jax._entry handles a stop during the heavy imports).
    if name in ("Dataset", "TaskSummary", "open_dataset"):
        from mlds_jax.research import reader

        return getattr(reader, name)
    raise AttributeError(f"module 'mlds_jax' has no attribute {name!r}")
