"""Weight-space analysis of a dataset (``pip install 'mlds-jax[analysis]'``: scikit-learn).

Each analysis is a function of arrays, usable from a notebook; ``analyze`` (``mlds
analyze``) runs them all on a store and writes ``analysis.json``.

- ``split_of``, ``load_split``, ``normalization``: fixed train/validation/test splits from the
  net id, per-position normalisation statistics (``splits``).
- ``Symmetries``: permutation and sign symmetries, ``canonicalize``, ``align`` (``symmetry``).
- ``tensor_statistics``, ``functional_features``: encoders (``features``).
- ``classify``, ``binary_scores``, ``regress``: probes on the fixed split (``probes``).
- ``clustering_scores``: task clusters in weight space (``clustering``).
- ``twin_divergence``, ``trigger_detection``: DS1/DS2 twins; ``trojan_detection``,
  ``cv_trojan_detection``: DS4's clean nets against their trojaned twins (``pairs``).
- ``WeightRows``, ``iterate_batches``, ``WeightDataset``: a split as training data.

Importing this package needs numpy only; scikit-learn is imported by the functions that use
it, with an ImportError naming the extra when it is missing.
"""

from mlds_jax.analysis.features import functional_features, probe_sequences, tensor_statistics
from mlds_jax.analysis.splits import SPLITS, load_split, normalization, split_of
from mlds_jax.analysis.symmetry import Symmetries
from mlds_jax.analysis.torch_dataset import WeightDataset, WeightRows, iterate_batches


def __getattr__(name):
    # Modules that import scikit-learn lazily still import fine; keep them out of the
    # package import so that `import mlds_jax.analysis` is cheap.
    import importlib

    homes = {"classify": "probes", "binary_scores": "probes", "regress": "probes",
             "wilson_interval": "probes", "clustering_scores": "clustering",
             "twin_divergence": "pairs", "trigger_detection": "pairs",
             "trojan_detection": "pairs", "cv_trojan_detection": "pairs", "analyze": "report"}
    if name in homes:
        return getattr(importlib.import_module(f"mlds_jax.analysis.{homes[name]}"), name)
    raise AttributeError(f"module 'mlds_jax.analysis' has no attribute {name!r}")


__all__ = ["SPLITS", "Symmetries", "WeightDataset", "WeightRows", "analyze", "binary_scores",
           "classify", "clustering_scores", "cv_trojan_detection", "functional_features",
           "iterate_batches", "load_split", "normalization", "probe_sequences", "regress",
           "split_of", "tensor_statistics", "trigger_detection", "trojan_detection",
           "twin_divergence", "wilson_interval"]
