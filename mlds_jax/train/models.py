"""The dataset networks, in PyTorch's parameter layout, and the flat-vector layout table.

A network maps a batch of sequences `(B, T, input_size)` (or one sequence `(T,
input_size)`) to one logit vector per step `(B, T, output_size)`: a stack of recurrent
layers (GRU or LSTM with `torch.nn.GRU` / `torch.nn.LSTM` equations, gate order and
parameter shapes) followed by a stack of linear layers with one activation between them.
Inside, a batch is laid out (features, T, B) so the recurrence works on whole feature
rows of B sequences. The net axis comes from `vmap` at the call site; nothing here knows
about it.

The recurrence has two implementations with the same results: `"xla"` (a `lax.scan`, any
backend) and `"cpu-kernel"`, compiled CPU kernels several times faster on CPU: for GRU nets
a layer kernel (`cpu_kernel.gru_layer`), and for GRU and LSTM nets a whole-net kernel that
the trainer calls once per net and minibatch (`kernel_loss`, `kernel_logits`).
`choose_recurrence` picks one.

Every net is stored as one flat float32 vector. `param_layout` says where each tensor
lives in it, in the order of the equivalent PyTorch module's `state_dict`, so
`torch.cat([t.flatten() for t in module.state_dict().values()])` is the same vector.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mlds_jax.config.network import ACTIVATION_NAMES, ConvNetConfig, NetworkConfig
from mlds_jax.train import cpu_kernel
from mlds_jax.train.cpu_kernel import mean_loss  # noqa: F401 (the losses, shared with the kernel)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch.nn.GELU() default
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.01),  # torch.nn.LeakyReLU() default
}
RECURRENCES = ("auto", "xla", "cpu-kernel")
assert tuple(ACTIVATIONS) == ACTIVATION_NAMES
GATES = {"gru": 3, "lstm": 4}  # r, z, n  /  i, f, g, o


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One tensor of the flat parameter vector."""

    path: tuple[str, ...]  # key path in the Flax params dict
    shape: tuple[int, ...]
    offset: int  # start in the flat vector
    torch_key: str  # key in the equivalent PyTorch module's state_dict

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def as_dict(self) -> dict:
        return {
            "name": "/".join(self.path),
            "shape": list(self.shape),
            "offset": self.offset,
            "torch_key": self.torch_key,
        }


def param_layout(cfg: NetworkConfig | ConvNetConfig) -> list[ParamSpec]:
    """Every tensor of the flat vector, in PyTorch `state_dict` order."""
    entries = _conv_entries(cfg) if isinstance(cfg, ConvNetConfig) else _rnn_entries(cfg)
    layout, offset = [], 0
    for path, shape, torch_key in entries:
        layout.append(ParamSpec(path, shape, offset, torch_key))
        offset += math.prod(shape)
    return layout


def _conv_entries(cfg: ConvNetConfig) -> list:
    """`torch.nn.Sequential(Conv2d, act, Conv2d, act, ...)` as `conv`, then `head` Linear."""
    entries, fan_in, k = [], cfg.in_channels, cfg.kernel_size
    for i, out in enumerate(cfg.channels):
        entries.append(((f"conv_{i}", "weight"), (out, fan_in, k, k), f"conv.{2 * i}.weight"))
        entries.append(((f"conv_{i}", "bias"), (out,), f"conv.{2 * i}.bias"))
        fan_in = out
    entries.append((("head", "weight"), (cfg.num_classes, fan_in), "head.weight"))
    entries.append((("head", "bias"), (cfg.num_classes,), "head.bias"))
    return entries


def _rnn_entries(cfg: NetworkConfig) -> list:
    g, h = GATES[cfg.cell] * cfg.hidden_size, cfg.hidden_size
    entries = []
    for layer in range(cfg.num_layers):
        fan_in = cfg.input_size if layer == 0 else h
        for name, shape in (
            ("weight_ih", (g, fan_in)),
            ("weight_hh", (g, h)),
            ("bias_ih", (g,)),
            ("bias_hh", (g,)),
        ):
            key = f"{name}_l{layer}"
            entries.append((("rnn", key), shape, f"rnn.{key}"))
    widths = (h, *cfg.head_sizes, cfg.output_size)
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        # torch.nn.Sequential(Linear, act, Linear, act, ...): linears sit at even indices.
        entries.append(((f"head_{i}", "weight"), (fan_out, fan_in), f"head.{2 * i}.weight"))
        entries.append(((f"head_{i}", "bias"), (fan_out,), f"head.{2 * i}.bias"))
    return entries


def num_params(cfg: NetworkConfig | ConvNetConfig) -> int:
    last = param_layout(cfg)[-1]
    return last.offset + last.size


def flatten_params(params, layout: Sequence[ParamSpec], xp=jnp):
    """Params pytree -> flat `(P,)` vector (or `(..., P)` when leaves carry leading axes)."""
    leaves = []
    for spec in layout:
        leaf = params[spec.path[0]][spec.path[1]]
        leaves.append(xp.reshape(leaf, leaf.shape[: leaf.ndim - len(spec.shape)] + (-1,)))
    return xp.concatenate(leaves, axis=-1)


def unflatten_params(flat, layout: Sequence[ParamSpec]) -> dict:
    """Flat `(..., P)` vector -> params pytree (numpy or jax arrays, leading axes kept)."""
    params: dict = {}
    lead = flat.shape[:-1]
    for spec in layout:
        leaf = flat[..., spec.offset : spec.offset + spec.size].reshape(lead + spec.shape)
        params.setdefault(spec.path[0], {})[spec.path[1]] = leaf
    return params


# --- one-net math -------------------------------------------------------------------------


def gru_cell(w_hh, b_hh, h, xi):
    """One GRU step, `torch.nn.GRU` equations, for B sequences. `xi = W_ih x + b_ih`,
    (3H, B); h: (H, B)."""
    hh = w_hh @ h + b_hh[:, None]
    xr, xz, xn = jnp.split(xi, 3)
    hr, hz, hn = jnp.split(hh, 3)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return (1.0 - z) * n + z * h


def lstm_cell(w_hh, b_hh, carry, xi):
    """One LSTM step, `torch.nn.LSTM` equations, for B sequences. `xi = W_ih x + b_ih`,
    (4H, B); carry: (h, c), each (H, B)."""
    h, c = carry
    i, f, g, o = jnp.split(xi + w_hh @ h + b_hh[:, None], 4)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return h, c


def recurrent_layer(cell: str, p: dict, layer: int, xs, recurrence: str = "xla"):
    """One recurrent layer over a batch of sequences: xs (in, T, B) -> (H, T, B), zero
    initial state.

    With `recurrence="xla"` the input projection is computed for all T steps at once and
    only `W_hh h` stays in the sequential scan; `"cpu-kernel"` runs a GRU layer in the
    compiled layer kernel. An LSTM has no layer kernel (its kernel takes the whole net:
    `kernel_loss`), so its layer stays in the scan.
    """
    w_ih, w_hh = p[f"weight_ih_l{layer}"], p[f"weight_hh_l{layer}"]
    b_ih, b_hh = p[f"bias_ih_l{layer}"], p[f"bias_hh_l{layer}"]
    if recurrence == "cpu-kernel" and cell == "gru":
        return cpu_kernel.gru_layer(w_ih, w_hh, b_ih, b_hh, xs)
    xi = jnp.einsum("gi,itb->tgb", w_ih, xs) + b_ih[None, :, None]  # (T, gH, B)
    zeros = jnp.zeros((w_hh.shape[1], xs.shape[-1]), xs.dtype)
    if cell == "gru":

        def step(h, xi_t):
            h = gru_cell(w_hh, b_hh, h, xi_t)
            return h, h

        init = zeros
    else:

        def step(carry, xi_t):
            carry = lstm_cell(w_hh, b_hh, carry, xi_t)
            return carry, carry[0]

        init = (zeros, zeros)
    _, hs = jax.lax.scan(step, init, xi)  # (T, H, B)
    return jnp.moveaxis(hs, 0, 1)


def choose_recurrence(cfg: NetworkConfig, requested: str = "auto") -> str:
    """The recurrence implementation to train with: `"cpu-kernel"` where it applies (on a
    CPU backend with the kernel built: GRU nets whose layers fit the layer kernel, LSTM nets
    that fit the whole-net kernel), else `"xla"`. Asking for `"cpu-kernel"` where it cannot
    run raises ValueError saying why."""
    if requested not in RECURRENCES:
        raise ValueError(f"recurrence must be one of {RECURRENCES}, got {requested!r}")
    if requested == "xla":
        return "xla"
    if isinstance(cfg, ConvNetConfig):
        if requested == "cpu-kernel":
            raise ValueError("the CPU kernel runs recurrent nets, not convolutional ones")
        return "xla"
    why = None
    if cfg.cell == "gru" and not cpu_kernel.supports(cfg.cell, cfg.hidden_size, cfg.input_size):
        why = f"the CPU kernel runs GRU layers up to width {cpu_kernel.MAX_WIDTH}"
    elif cfg.cell == "lstm" and not kernel_loss_supported(cfg):
        why = (f"the CPU kernel runs LSTM nets whole: widths up to {cpu_kernel.MAX_WIDTH} and "
               f"a head activation in {sorted(cpu_kernel.HEAD_ACTIVATIONS)}")
    elif jax.default_backend() != "cpu":
        why = f"the CPU kernel runs on the CPU backend, not {jax.default_backend()}"
    elif not cpu_kernel.available():
        why = f"the CPU kernel is unavailable: {cpu_kernel.unavailable_reason()}"
    if why and requested == "cpu-kernel":
        raise ValueError(why)
    return "xla" if why else "cpu-kernel"


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class RNNClassifier(nn.Module):
    """Recurrent stack + linear head: (B, T, input_size) -> (B, T, output_size), or one
    sequence (T, input_size) -> (T, output_size).

    Parameters use PyTorch's shapes and default initialisation (every tensor uniform in
    +-1/sqrt(fan_in); for the recurrent layers fan_in is the hidden size).
    """

    cfg: NetworkConfig
    recurrence: str = "xla"  # "xla" | "cpu-kernel" (see choose_recurrence)

    @nn.compact
    def __call__(self, xs):
        cfg = self.cfg
        one = xs.ndim == 2
        y = jnp.transpose(xs[None] if one else xs, (2, 1, 0))  # (I, T, B)
        y = _RecurrentStack(cfg, self.recurrence, name="rnn")(y)
        widths = _widths(cfg)
        act = ACTIVATIONS[cfg.activation]
        for i in range(len(widths) - 1):
            y = _Linear(widths[i], widths[i + 1], name=f"head_{i}")(y)
            if i < len(widths) - 2:
                y = act(y)
        y = jnp.transpose(y, (2, 1, 0))  # (B, T, O)
        return y[0] if one else y


class _RecurrentStack(nn.Module):
    cfg: NetworkConfig
    recurrence: str

    @nn.compact
    def __call__(self, xs):
        cfg = self.cfg
        g, h = GATES[cfg.cell] * cfg.hidden_size, cfg.hidden_size
        init = _uniform(1.0 / math.sqrt(h))
        p = {}
        for layer in range(cfg.num_layers):
            fan_in = cfg.input_size if layer == 0 else h
            p[f"weight_ih_l{layer}"] = self.param(f"weight_ih_l{layer}", init, (g, fan_in))
            p[f"weight_hh_l{layer}"] = self.param(f"weight_hh_l{layer}", init, (g, h))
            p[f"bias_ih_l{layer}"] = self.param(f"bias_ih_l{layer}", init, (g,))
            p[f"bias_hh_l{layer}"] = self.param(f"bias_hh_l{layer}", init, (g,))
        for layer in range(cfg.num_layers):
            xs = recurrent_layer(cfg.cell, p, layer, xs, self.recurrence)
        return xs


class _Linear(nn.Module):
    """`torch.nn.Linear`: weight (out, in), bias (out,); features on axis 0: (in, ...) ->
    (out, ...)."""

    fan_in: int
    fan_out: int

    @nn.compact
    def __call__(self, x):
        init = _uniform(1.0 / math.sqrt(self.fan_in))
        w = self.param("weight", init, (self.fan_out, self.fan_in))
        b = self.param("bias", init, (self.fan_out,))
        y = jnp.tensordot(w, x, axes=(1, 0))
        return y + b.reshape((-1,) + (1,) * (y.ndim - 1))


def init_params(cfg: NetworkConfig | ConvNetConfig, key: jax.Array) -> dict:
    """One net's parameter pytree from a typed key (PyTorch's default initialisation)."""
    if isinstance(cfg, ConvNetConfig):
        return _conv_init(cfg, key)
    dummy = jnp.zeros((1, cfg.input_size), jnp.float32)
    return RNNClassifier(cfg).init(key, dummy)["params"]


def apply(cfg: NetworkConfig, params: dict, xs, recurrence: str = "xla"):
    """One net on a batch of sequences, xs (B, T, input_size) -> logits (B, T,
    output_size), or on one sequence (T, input_size) -> (T, output_size). A ConvNetConfig
    net: images (B, H, W) or (B, C, H, W) -> class logits (B, num_classes) (`conv_apply`)."""
    if isinstance(cfg, ConvNetConfig):
        return conv_apply(cfg, params, xs)
    return RNNClassifier(cfg, recurrence).apply({"params": params}, xs)


def kernel_loss_supported(cfg: NetworkConfig | ConvNetConfig) -> bool:
    """Whether `kernel_loss` can train this network (GRU or LSTM, widths up to the kernel's,
    head activation tanh or relu); it also needs `choose_recurrence` to pick the kernel."""
    if isinstance(cfg, ConvNetConfig):
        return False
    return cpu_kernel.net_supports(cfg.cell, cfg.input_size, _widths(cfg), cfg.activation)


def kernel_loss(cfg: NetworkConfig, loss: str, flat, xs, ys):
    """Mean loss of one net (flat (P,) parameters) on a batch, xs (B, T, input_size), ys
    (B, T, output_size): `loss` "bce" (target bits) or "softmax_ce" (one-hot target
    symbols), computed with its gradient by the CPU kernel's whole-net training step
    (`cpu_kernel.net_loss`)."""
    return cpu_kernel.net_loss(flat, xs, ys, _widths(cfg), cfg.num_layers, cfg.activation,
                               cfg.cell, loss)


def kernel_logits(cfg: NetworkConfig, flat, xs):
    """One net (flat (P,) parameters) on a batch, xs (B, T, input_size) -> logits (B, T,
    output_size), by the whole-net kernel's forward pass; not differentiable."""
    return cpu_kernel.net_logits(flat, xs, _widths(cfg), cfg.num_layers, cfg.activation,
                                 cfg.cell)


def _widths(cfg: NetworkConfig) -> tuple[int, ...]:
    """Feature widths through the head: the last recurrent layer's, each hidden one, the output."""
    return (cfg.hidden_size, *cfg.head_sizes, cfg.output_size)


def to_numpy_state_dict(flat: np.ndarray, layout: Sequence[ParamSpec]) -> dict[str, np.ndarray]:
    """Flat `(P,)` vector -> {torch state_dict key: array}, ready for `torch.from_numpy`."""
    return {
        spec.torch_key: np.asarray(flat[spec.offset : spec.offset + spec.size]).reshape(spec.shape)
        for spec in layout
    }


# --- DS4: the convolutional net --------------------------------------------------------------


def _conv_init(cfg: ConvNetConfig, key: jax.Array) -> dict:
    """`torch.nn.Conv2d` / `torch.nn.Linear` default init: weight and bias uniform in
    +-1/sqrt(fan_in), fan_in = in_channels x kernel area (kaiming_uniform with a = sqrt(5)
    gives that bound for the weight). One key per layer, split into weight and bias."""
    params = {}
    layout = param_layout(cfg)
    weights = [spec for spec in layout if spec.path[1] == "weight"]
    for spec, k in zip(weights, jax.random.split(key, len(weights))):
        bound = 1.0 / math.sqrt(math.prod(spec.shape[1:]))
        k_w, k_b = jax.random.split(k)
        params[spec.path[0]] = {"weight": _uniform(bound)(k_w, spec.shape),
                                "bias": _uniform(bound)(k_b, spec.shape[:1])}
    return params


def _conv2d(x, w, stride: int, pad: int):
    """`torch.nn.Conv2d`'s cross-correlation as one matmul over the kernel's shifted views
    (im2col): x (B, C, H, W), w (O, C, k, k) -> (B, O, H', W'). Vmapped over nets this is a
    batched matmul; XLA's CPU convolution, vmapped over weights, becomes a grouped one that
    ran several times slower here."""
    k = w.shape[-1]
    h, wd = x.shape[2], x.shape[3]
    x = jnp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    views = [x[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
             for i in range(k) for j in range(k)]  # k*k of (B, C, H', W')
    patches = jnp.stack(views, axis=2)  # (B, C, k*k, H', W')
    return jnp.einsum("bckhw,ock->bohw", patches, w.reshape(w.shape[0], w.shape[1], k * k))


def conv_apply(cfg: ConvNetConfig, params: dict, xs):
    """One net on images: (B, H, W) or (B, C, H, W) -> logits (B, num_classes); one image
    (H, W) (with C = 1) -> (num_classes,). Cross-correlation as `torch.nn.Conv2d`, padding
    kernel_size // 2 on every side, then the mean over the spatial axes."""
    one = xs.ndim == 2
    x = xs[None] if one else xs
    if x.ndim == 3:
        x = x[:, None]  # (B, 1, H, W)
    act = ACTIVATIONS[cfg.activation]
    pad = cfg.kernel_size // 2
    for i, stride in enumerate(cfg.strides):
        p = params[f"conv_{i}"]
        x = act(_conv2d(x, p["weight"], stride, pad) + p["bias"][None, :, None, None])
    pooled = x.mean(axis=(2, 3))  # (B, C)
    logits = pooled @ params["head"]["weight"].T + params["head"]["bias"][None]
    return logits[0] if one else logits
