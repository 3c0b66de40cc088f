"""The PyTorch reference the JAX model and trainer are tested against: the package's own
`mlds_jax.research.torch_export.TorchNet` (plain `torch.nn.GRU`/`LSTM` + `Linear` head), built from a
NetworkConfig and loaded through the layout table."""

from __future__ import annotations

import numpy as np

from mlds_jax.config.network import NetworkConfig
from mlds_jax.research.torch_export import TorchNet as _TorchNet
from mlds_jax.research.torch_export import torch_net as _torch_net
from mlds_jax.train.models import param_layout


def TorchNet(cfg: NetworkConfig) -> _TorchNet:  # noqa: N802 (stands where a class stood)
    """The freshly initialised torch module of the network ``cfg``."""
    return _TorchNet.from_config(cfg)


def torch_net(cfg: NetworkConfig, flat: np.ndarray) -> _TorchNet:
    """A TorchNet (eval mode) holding the flat vector `flat` (P,), loaded through the layout
    table."""
    return _torch_net(cfg, [spec.as_dict() for spec in param_layout(cfg)], flat)
