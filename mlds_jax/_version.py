"""The installed package's version, apart from `mlds_jax/__init__.py` so that any room can
record it (in a store's attrs, a checkpoint, an export) without importing the public API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlds-jax")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
