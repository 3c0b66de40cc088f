"""The network section of a config (`[network]`): the shape of every net of a dataset, one
frozen dataclass per model family (`NetworkConfig`: recurrent nets, DS1-DS3; `ConvNetConfig`:
DS4's CNN). The math lives in `mlds_jax.train.models`; a new model family adds its dataclass
here and its layout, init and forward pass there."""

from __future__ import annotations

import dataclasses

# Between head layers; mlds_jax.train.models.ACTIVATIONS maps each name to its function.
ACTIVATION_NAMES = ("relu", "tanh", "gelu", "silu", "elu", "leaky_relu")
CELLS = ("gru", "lstm")


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Architecture shared by every net of a dataset. Defaults: the DS1 network (4,364 params)."""

    cell: str = "gru"  # "gru" | "lstm"
    input_size: int = 9  # DS1: strobe + 8 data bits
    hidden_size: int = 12
    num_layers: int = 4
    head_sizes: tuple[int, ...] = (8, 32, 8)  # hidden widths of the linear head
    output_size: int = 8  # one logit per output pin
    activation: str = "tanh"  # between head layers; part of the recipe, recorded in the store

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"network.cell must be one of {CELLS}, got {self.cell!r}")
        if self.activation not in ACTIVATION_NAMES:
            raise ValueError(
                f"network.activation must be one of {sorted(ACTIVATION_NAMES)}, got {self.activation!r}"
            )
        for name in ("input_size", "hidden_size", "num_layers", "output_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"network.{name} must be positive, got {getattr(self, name)}")
        object.__setattr__(self, "head_sizes", tuple(int(h) for h in self.head_sizes))


@dataclasses.dataclass(frozen=True)
class ConvNetConfig:
    """DS4's image classifier: convolutions (3x3 by default, padding kernel // 2, no
    BatchNorm: its running statistics could leak a label), each followed by `activation`,
    then global average pooling and one Linear to the class logits. Defaults: the Small CNN
    Zoo's shape, 4,970 parameters on 8x8 one-channel images."""

    in_channels: int = 1
    image_size: int = 8
    channels: tuple[int, ...] = (16, 16, 16)
    strides: tuple[int, ...] = (1, 2, 2)  # 8x8 -> 8x8 -> 4x4 -> 2x2: 55k multiply-adds/image
    kernel_size: int = 3
    num_classes: int = 10
    activation: str = "relu"

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if self.activation not in ACTIVATION_NAMES:
            raise ValueError(
                f"network.activation must be one of {sorted(ACTIVATION_NAMES)}, got {self.activation!r}"
            )
        if not self.channels or len(self.strides) != len(self.channels):
            raise ValueError(f"network.strides must give one stride per convolution "
                             f"({len(self.channels)}), got {list(self.strides)}")
        for name in ("in_channels", "image_size", "kernel_size", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"network.{name} must be positive, got {getattr(self, name)}")
        if min(self.channels) < 1 or min(self.strides) < 1:
            raise ValueError("network.channels and network.strides must be positive")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"network.kernel_size must be odd (same padding), got "
                             f"{self.kernel_size}")
