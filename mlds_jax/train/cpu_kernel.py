"""GRU and LSTM nets as compiled CPU kernels (XLA FFI), for training on CPU.

On CPU, XLA runs the time loop of our small nets far below the machine's arithmetic rate
(see benchmarks/throughput.py and csrc/rnn.cc). The kernels keep sequences in the SIMD
lanes; vmapped axes become leading net axes of each call.
  `gru_layer`   one GRU layer, what `models.recurrent_layer` computes (custom_vjp: forward
                and backward through time, one call each);
  `net_loss`    a whole net's training step (GRU or LSTM stack, linear head, mean BCE or
                softmax cross-entropy), value and gradient in one call (custom_vjp);
  `net_logits`  a whole net's forward pass (validation).

The C++ source ships with the package and is compiled on first use with the system's C++
compiler for this machine's CPU, into a per-user cache keyed by the source, the flags, the
compiler, jaxlib and the CPU; later processes load the cached library. Where that fails
(no compiler, another OS), `available()` is False, says why in `unavailable_reason()`, and
the trainer stays on the XLA recurrence. Set MLDS_JAX_CPU_KERNEL=0 to never build or use it.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

SOURCE = Path(__file__).parent / "csrc" / "rnn.cc"
FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w"]
TARGETS = {"mlds_gru_forward": "MldsGruForward", "mlds_gru_backward": "MldsGruBackward",
           "mlds_rnn_net_loss": "MldsRnnNetLoss", "mlds_rnn_net_logits": "MldsRnnNetLogits"}
MAX_WIDTH = 128  # kMaxWidth in rnn.cc: layer widths the kernel takes
# The whole-net kernel's choices, as rnn.cc numbers them.
HEAD_ACTIVATIONS = {"tanh": 0, "relu": 1}
NET_CELLS = {"gru": 0, "lstm": 1}
LOSSES = {"bce": 0, "softmax_ce": 1}  # mean over (B, T, O) bits / over (B, T) symbols


class KernelUnavailable(RuntimeError):
    pass


def _cache_dir() -> Path:
    root = os.environ.get("MLDS_JAX_CACHE") or os.environ.get("XDG_CACHE_HOME")
    # Absolute, once: g++ and dlopen are handed one full path (a relative MLDS_JAX_CACHE is
    # read against this process's working directory, here and nowhere later).
    return Path(root or Path.home() / ".cache").absolute() / "mlds_jax"


def _cpu_signature() -> str:
    """What -march=native depends on: a library built here must not load on another CPU."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        raise KernelUnavailable("no C++ compiler found (set CXX, or install g++)")
    return cxx


def _build() -> Path:
    """The compiled library for this machine, built now if the cache lacks it."""
    import jaxlib

    cxx = _compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), " ".join(FLAGS), version, jaxlib.__version__,
                   _cpu_signature()]).encode()
    ).hexdigest()[:16]
    lib = _cache_dir() / f"rnn-{key}.so"
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent processes never load a partial file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
    os.close(fd)
    cmd = [cxx, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        os.unlink(tmp)
        raise KernelUnavailable(f"compiling {SOURCE.name} failed:\n{done.stderr[-2000:]}")
    os.replace(tmp, lib)
    return lib


@functools.cache
def _load() -> str | None:
    """Build, load and register the kernel once per process; the reason if that failed."""
    if os.environ.get("MLDS_JAX_CPU_KERNEL", "1") == "0":
        return "disabled by MLDS_JAX_CPU_KERNEL=0"
    try:
        lib = ctypes.cdll.LoadLibrary(str(_build()))
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform="cpu")
    except (KernelUnavailable, OSError, AttributeError, subprocess.SubprocessError) as err:
        return str(err)
    return None


def available() -> bool:
    """Whether the kernel is built and registered (building it on the first call)."""
    return _load() is None


def unavailable_reason() -> str | None:
    return _load()


def supports(cell: str, hidden_size: int, input_size: int) -> bool:
    """Whether a layer of this shape can run on the layer kernel (`gru_layer`)."""
    return cell == "gru" and max(hidden_size, input_size) <= MAX_WIDTH


def net_supports(cell: str, input_size: int, widths: tuple[int, ...], activation: str) -> bool:
    """Whether a whole net (GRU or LSTM stack of width widths[0], linear head through
    widths[1:]) can train on `net_loss`."""
    return (cell in NET_CELLS and max(input_size, *widths) <= MAX_WIDTH
            and activation in HEAD_ACTIVATIONS)


def _require() -> None:
    if (reason := _load()) is not None:
        raise KernelUnavailable(reason)


def _f32(shape) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _forward(w_ih, w_hh, b_ih, b_hh, xs):
    _require()
    hidden, (t, b) = w_hh.shape[-1], xs.shape[-2:]
    lead = xs.shape[:-3]
    call = jax.ffi.ffi_call(
        "mlds_gru_forward", (_f32(lead + (hidden, t, b)), _f32(lead + (4, hidden, t, b))),
        vmap_method="broadcast_all",
    )
    return call(w_ih, w_hh, b_ih, b_hh, xs)


@jax.custom_vjp
def gru_layer(w_ih, w_hh, b_ih, b_hh, xs):
    """One GRU layer over a batch of sequences in the (features, T, B) layout:
    xs (I, T, B) -> hs (H, T, B), zero initial state, `torch.nn.GRU` equations."""
    return _forward(w_ih, w_hh, b_ih, b_hh, xs)[0]


def _gru_fwd(w_ih, w_hh, b_ih, b_hh, xs):
    hs, saved = _forward(w_ih, w_hh, b_ih, b_hh, xs)
    return hs, (w_ih, w_hh, xs, hs, saved)


def _gru_bwd(res, dhs):
    w_ih, w_hh, xs, hs, saved = res
    shapes = (w_ih.shape, w_hh.shape, w_ih.shape[:-1], w_hh.shape[:-1], xs.shape)
    call = jax.ffi.ffi_call("mlds_gru_backward", tuple(_f32(s) for s in shapes),
                            vmap_method="broadcast_all")
    return tuple(call(w_ih, w_hh, xs, hs, saved, dhs))


gru_layer.defvjp(_gru_fwd, _gru_bwd)


# --- one training step of a whole net -----------------------------------------------------


def mean_loss(loss: str, logits, ys):
    """The mean loss the kernel differentiates: BCE over (B, T, O) target bits, or softmax
    cross-entropy over (B, T) target distributions (one-hot symbols). A step whose first
    target is negative (a length curriculum's ungraded steps) adds 0; the mean is still
    over every (B, T, O) bit or (B, T) step."""
    graded = ys[..., :1] >= 0  # (B, T, 1)
    if loss == "bce":
        return jnp.where(graded, optax.sigmoid_binary_cross_entropy(logits, ys), 0.0).mean()
    return jnp.where(graded[..., 0], optax.softmax_cross_entropy(logits, ys), 0.0).mean()


def _net_attrs(widths, layers, activation, cell) -> dict:
    return dict(widths=np.asarray(widths, np.int64), layers=np.int64(layers),
                activation=np.int64(HEAD_ACTIVATIONS[activation]), cell=np.int64(NET_CELLS[cell]))


def _net_call(flat, xs, ys, widths, layers, activation, cell, loss):
    _require()
    call = jax.ffi.ffi_call("mlds_rnn_net_loss", (_f32(ys.shape), _f32(flat.shape)),
                            vmap_method="broadcast_all")
    return call(flat, xs, ys, **_net_attrs(widths, layers, activation, cell),
                loss=np.int64(LOSSES[loss]))


def net_logits(flat, xs, widths: tuple[int, ...], layers: int, activation: str, cell: str):
    """The forward pass alone of the net `net_loss` trains: flat (P,), xs (B, T, I) ->
    logits (B, T, widths[-1]). Not differentiable (validation and evaluation)."""
    _require()
    call = jax.ffi.ffi_call("mlds_rnn_net_logits", _f32(xs.shape[:-1] + (widths[-1],)),
                            vmap_method="broadcast_all")
    return call(flat, xs, **_net_attrs(widths, layers, activation, cell))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def net_loss(flat, xs, ys, widths: tuple[int, ...], layers: int, activation: str, cell: str,
             loss: str):
    """Mean loss of one net on a batch: `layers` recurrent layers (`cell`, "gru" or "lstm")
    of width widths[0], then linear layers through widths[1:] with `activation` between
    them; `loss` "bce" or "softmax_ce" (see `mean_loss`).

    flat: (P,) the net's parameters in models.param_layout order; xs (B, T, I); ys (B, T, O)
    targets. The same value as `mean_loss(loss, apply(...), ys)`; its gradient w.r.t. flat
    comes from the same kernel call as the value (the forward and backward of the whole net
    in one pass over each net's working set)."""
    return mean_loss(loss, _net_call(flat, xs, ys, widths, layers, activation, cell, loss)[0], ys)


def _net_fwd(flat, xs, ys, widths, layers, activation, cell, loss):
    logits, dflat = _net_call(flat, xs, ys, widths, layers, activation, cell, loss)
    return mean_loss(loss, logits, ys), dflat


def _net_bwd(widths, layers, activation, cell, loss, dflat, g):
    return g * dflat, None, None  # the data gets no gradient


net_loss.defvjp(_net_fwd, _net_bwd)
