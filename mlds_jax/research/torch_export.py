"""The dataset networks as PyTorch modules, built from what a store or an export records.

`TorchNet` is `torch.nn.GRU`/`torch.nn.LSTM` (batch_first) followed by
`Sequential(Linear, act, ..., Linear)`: the same equations, gate order and `state_dict` keys
as `mlds_jax.models.RNNClassifier`, so a net's flat vector loads through the store's layout
table unchanged and gives the JAX model's outputs (tests/test_reader.py checks 1e-5).

Needs torch (`pip install 'mlds-jax[torch]'`); imports neither JAX nor zarr.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

ACTIVATIONS = {  # the defaults match mlds_jax.train.models.ACTIVATIONS
    "relu": torch.nn.ReLU,
    "tanh": torch.nn.Tanh,
    "gelu": torch.nn.GELU,  # exact erf form
    "silu": torch.nn.SiLU,
    "elu": torch.nn.ELU,
    "leaky_relu": torch.nn.LeakyReLU,  # slope 0.01
}
NETWORK_KEYS = ("cell", "input_size", "hidden_size", "num_layers", "head_sizes", "output_size",
                "activation")


class TorchNet(torch.nn.Module):
    """One dataset network. forward: (B, T, input_size) -> (B, T, output_size) logits, or an
    unbatched (T, input_size) -> (T, output_size); zero initial recurrent state."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int,
                 head_sizes: Sequence[int], output_size: int, activation: str):
        super().__init__()
        rnn = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}.get(cell)
        if rnn is None:
            raise ValueError(f"unknown cell {cell!r} (known: gru, lstm)")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} (known: {', '.join(ACTIVATIONS)})")
        self.rnn = rnn(input_size, hidden_size, num_layers, batch_first=True)
        widths = (hidden_size, *head_sizes, output_size)
        layers: list[torch.nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.head = torch.nn.Sequential(*layers)

    @classmethod
    def from_config(cls, network) -> "TorchNet":
        """From a store's ``attrs["config"]["network"]`` dict (or a NetworkConfig)."""
        if not isinstance(network, Mapping):
            network = {k: getattr(network, k) for k in NETWORK_KEYS}
        missing = [k for k in NETWORK_KEYS if k not in network]
        if missing:
            raise ValueError(f"network config lacks {', '.join(missing)}")
        return cls(**{k: network[k] for k in NETWORK_KEYS})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


CONV_KEYS = ("in_channels", "image_size", "channels", "strides", "kernel_size", "num_classes",
             "activation")


class TorchConvNet(torch.nn.Module):
    """DS4's network (mlds_jax.models.ConvNetConfig): `conv` = Sequential(Conv2d, act, ...)
    with padding kernel_size // 2, global average pooling, `head` = Linear. forward: images
    (B, H, W) or (B, C, H, W) -> logits (B, num_classes)."""

    def __init__(self, in_channels: int, image_size: int, channels: Sequence[int],
                 strides: Sequence[int], kernel_size: int, num_classes: int, activation: str):
        super().__init__()
        layers: list[torch.nn.Module] = []
        fan_in = in_channels
        for out, stride in zip(channels, strides):
            layers += [torch.nn.Conv2d(fan_in, out, kernel_size, stride, kernel_size // 2),
                       ACTIVATIONS[activation]()]
            fan_in = out
        self.conv = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(fan_in, num_classes)

    @classmethod
    def from_config(cls, network) -> "TorchConvNet":
        if not isinstance(network, Mapping):
            network = {k: getattr(network, k) for k in CONV_KEYS}
        return cls(**{k: network[k] for k in CONV_KEYS})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x[:, None]
        return self.head(self.conv(x).mean(dim=(2, 3)))


def module_from_config(network) -> torch.nn.Module:
    """TorchConvNet for a DS4 network config (dict or dataclass), else TorchNet."""
    keys = network if isinstance(network, Mapping) else vars(network)
    return (TorchConvNet if "channels" in keys else TorchNet).from_config(network)


def state_dict_from_flat(flat, layout: Sequence[Mapping]) -> dict[str, torch.Tensor]:
    """Flat (P,) vector -> {state_dict key: tensor} through the layout table (a list of
    dicts with torch_key, shape, offset, as in a store's ``attrs["layout"]``)."""
    flat = np.asarray(flat, np.float32)
    return {
        s["torch_key"]: torch.from_numpy(
            flat[s["offset"] : s["offset"] + math.prod(s["shape"])].reshape(s["shape"]).copy())
        for s in layout
    }


def torch_net(network, layout: Sequence[Mapping], flat) -> torch.nn.Module:
    """A TorchNet, or for DS4 a TorchConvNet (eval mode), holding the flat vector ``flat``
    (P,)."""
    net = module_from_config(network)
    net.load_state_dict(state_dict_from_flat(flat, layout), strict=True)
    return net.eval()


def load_nets(path) -> list[tuple[TorchNet, dict]]:
    """The nets of an ``mlds export --format torch`` file: (module in eval mode, its
    metadata: net, task, task_name, status_name, epochs, accuracies...) per net."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    network = blob["metadata"]["network"]
    out = []
    for entry in blob["nets"]:
        net = module_from_config(network)
        net.load_state_dict(entry["state_dict"], strict=True)
        out.append((net.eval(), {k: v for k, v in entry.items() if k != "state_dict"}))
    return out
