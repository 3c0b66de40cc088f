"""PyTorch versions of the dataset networks, built from the layout table: the independent
reference the JAX model and trainer are tested against."""

from __future__ import annotations

import numpy as np
import torch

from mlds_jax.models import NetworkConfig, param_layout

TORCH_ACTIVATIONS = {
    "relu": torch.nn.ReLU,
    "tanh": torch.nn.Tanh,
    "gelu": torch.nn.GELU,
    "silu": torch.nn.SiLU,
    "elu": torch.nn.ELU,
    "leaky_relu": torch.nn.LeakyReLU,
}


class TorchNet(torch.nn.Module):
    """`torch.nn.GRU`/`LSTM` (batch_first) + `Sequential(Linear, act, ..., Linear)`."""

    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        rnn = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cfg.cell]
        self.rnn = rnn(cfg.input_size, cfg.hidden_size, cfg.num_layers, batch_first=True)
        widths = (cfg.hidden_size, *cfg.head_sizes, cfg.output_size)
        layers: list[torch.nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(TORCH_ACTIVATIONS[cfg.activation]())
        self.head = torch.nn.Sequential(*layers)

    def forward(self, x):  # (B, T, I) -> (B, T, O)
        return self.head(self.rnn(x)[0])


def torch_net(cfg: NetworkConfig, flat: np.ndarray) -> TorchNet:
    """A TorchNet holding the flat vector `flat` (P,), loaded through the layout table."""
    net = TorchNet(cfg)
    state = {
        spec.torch_key: torch.from_numpy(
            np.array(flat[spec.offset : spec.offset + spec.size], np.float32).reshape(spec.shape)
        )
        for spec in param_layout(cfg)
    }
    net.load_state_dict(state, strict=True)
    return net
