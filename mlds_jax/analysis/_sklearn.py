"""scikit-learn is optional (the ``analysis`` extra): import it only where it is used."""

from __future__ import annotations

import importlib


def sklearn(module: str):
    """``sklearn.<module>``, or ImportError with one line saying how to install it."""
    try:
        return importlib.import_module(f"sklearn.{module}")
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "sklearn":
            raise ImportError("mlds_jax.analysis needs scikit-learn: "
                              "pip install 'mlds-jax[analysis]'") from None
        raise


def one_thread():
    """A context in which scikit-learn's OpenMP and BLAS pools use one thread. On a shared
    2-core machine, histogram gradient boosting with its default threads took 260 s for a
    fit that takes 12 s on one thread (OpenMP workers spin-waiting for busy cores); the
    analyses here are small enough that one thread costs little elsewhere."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)
