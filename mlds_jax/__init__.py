"""MLDS-JAX: datasets of thousands of tiny trained RNNs, trained at once with jax.vmap."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlds-jax")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from mlds_jax.reader import Dataset, TaskSummary, open_dataset  # noqa: E402

__all__ = ["Dataset", "TaskSummary", "open_dataset", "__version__"]
