"""The compiled CPU kernels against PyTorch (forward and gradients), against the XLA
recurrence, under vmap, with odd shapes and partial SIMD blocks, and their fallbacks: the
GRU layer kernel, and the whole-net kernel with both cells (GRU + BCE for DS1/DS2, LSTM +
softmax cross-entropy for DS3)."""

import dataclasses
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mlds_jax.config.network import NetworkConfig
from mlds_jax.train import cpu_kernel, models
from tests.torch_reference import torch_net

DS1 = NetworkConfig()
# Odd sizes: hidden and input not multiples of 4 or 16, two layers, a one-layer head.
ODD = NetworkConfig(input_size=3, hidden_size=5, num_layers=2, head_sizes=(4,), output_size=2,
                    activation="relu")
# The DS3 network (LSTM 4 x 64, head 128, relu; 136,846 parameters) and an odd LSTM.
DS3 = NetworkConfig(cell="lstm", input_size=39, hidden_size=64, num_layers=4, head_sizes=(128,),
                    output_size=14, activation="relu")
ODD_LSTM = NetworkConfig(cell="lstm", input_size=5, hidden_size=7, num_layers=3, head_sizes=(6,),
                         output_size=3, activation="tanh")


@pytest.fixture(autouse=True, scope="module")
def kernel():
    if not cpu_kernel.available():
        if shutil.which("g++") or shutil.which("c++"):
            pytest.fail(f"a compiler is present but the kernel is unavailable: "
                        f"{cpu_kernel.unavailable_reason()}")
        pytest.skip(cpu_kernel.unavailable_reason())


def _inputs(cfg, batch, length, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, length, cfg.input_size)).astype(np.float32)


def _torch_grads(cfg, flat, xs, weights):
    """Gradient of sum(logits * weights) by torch autograd: (flat params grad, input grad)."""
    net = torch_net(cfg, flat)
    x = torch.from_numpy(xs).requires_grad_(True)
    (net(x) * torch.from_numpy(weights)).sum().backward()
    grads = [p.grad.flatten() for p in net.parameters()]  # state_dict order, no buffers
    return torch.cat(grads).numpy(), x.grad.numpy()


@pytest.mark.parametrize("cfg,batch,length", [(DS1, 16, 32), (DS1, 21, 9), (ODD, 1, 7),
                                              (ODD, 37, 5)],
                         ids=["ds1-full-block", "ds1-partial-block", "odd-one", "odd-37"])
def test_forward_and_gradients_equal_torch(cfg, batch, length):
    layout = models.param_layout(cfg)
    params = models.init_params(cfg, jax.random.key(5))
    flat = np.asarray(models.flatten_params(params, layout))
    xs = _inputs(cfg, batch, length)
    weights = np.random.default_rng(1).normal(size=(batch, length, cfg.output_size))
    weights = weights.astype(np.float32)

    def loss(p, x):
        return (models.apply(cfg, p, x, "cpu-kernel") * weights).sum()

    logits = jax.jit(lambda p, x: models.apply(cfg, p, x, "cpu-kernel"))(params, xs)
    g_params, g_xs = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, jnp.asarray(xs))
    with torch.no_grad():
        ref_logits = torch_net(cfg, flat)(torch.from_numpy(xs)).numpy()
    ref_gp, ref_gx = _torch_grads(cfg, flat, xs, weights)

    assert logits.shape == (batch, length, cfg.output_size)
    assert np.abs(np.asarray(logits) - ref_logits).max() <= 1e-5
    ours = np.asarray(models.flatten_params(g_params, layout))
    scale = max(1.0, np.abs(ref_gp).max())
    assert np.abs(ours - ref_gp).max() <= 1e-4 * scale
    assert np.abs(np.asarray(g_xs) - ref_gx).max() <= 1e-4 * max(1.0, np.abs(ref_gx).max())


def test_kernel_equals_xla_recurrence_under_vmap_over_nets():
    """Nets stacked on a vmapped axis (how the trainer calls it) give each net's own result."""
    keys = jax.random.split(jax.random.key(9), 6)
    stacked = jax.vmap(lambda k: models.init_params(DS1, k))(keys)
    xs = jnp.asarray(np.stack([_inputs(DS1, 16, 12, seed=s) for s in range(6)]))

    def loss(recurrence, p, x):
        return jnp.tanh(models.apply(DS1, p, x, recurrence)).mean()

    def both(recurrence):
        f = jax.jit(jax.vmap(jax.value_and_grad(lambda p, x: loss(recurrence, p, x))))
        return f(stacked, xs)

    (l_k, g_k), (l_x, g_x) = both("cpu-kernel"), both("xla")
    np.testing.assert_allclose(l_k, l_x, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g_k, g_x)
    # And net 4 alone equals net 4 in the stack.
    alone = jax.grad(lambda p, x: loss("cpu-kernel", p, x))(
        jax.tree.map(lambda a: a[4], stacked), xs[4])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[4], b, atol=1e-7), g_k, alone)


# The whole-net training step: DS1 (one full block; three blocks, the last partial), odd
# sizes with a relu head, a head with no hidden layer; the DS3 LSTM with softmax
# cross-entropy (one full block; two blocks, the second partial), odd LSTMs, and the loss
# and the cell crossed (GRU + softmax, LSTM + BCE) so neither is tied to the other.
NO_HEAD = NetworkConfig(input_size=4, hidden_size=7, num_layers=3, head_sizes=(), output_size=3)
NO_HEAD_LSTM = NetworkConfig(cell="lstm", input_size=4, hidden_size=9, num_layers=2,
                             head_sizes=(), output_size=5)
WHOLE_NET_CASES = {
    "ds1-one-block": (DS1, "bce", 16, 32),
    "ds1-three-blocks": (DS1, "bce", 37, 9),
    "odd-relu": (ODD, "bce", 5, 7),
    "no-hidden-head": (NO_HEAD, "bce", 3, 4),
    "ds3-one-block": (DS3, "softmax_ce", 16, 12),
    "ds3-two-blocks": (DS3, "softmax_ce", 21, 7),
    "lstm-odd-tanh": (ODD_LSTM, "softmax_ce", 37, 6),
    "lstm-no-hidden-head": (NO_HEAD_LSTM, "softmax_ce", 1, 5),
    "lstm-bce": (ODD_LSTM, "bce", 5, 4),
    "gru-softmax": (ODD, "softmax_ce", 19, 5),
}


def _targets(cfg, loss, batch, length, seed):
    """Random target bits (BCE) or one-hot symbols (softmax cross-entropy), (B, T, O)."""
    rng = np.random.default_rng(seed)
    if loss == "bce":
        return (rng.random((batch, length, cfg.output_size)) < 0.5).astype(np.float32)
    return np.eye(cfg.output_size, dtype=np.float32)[rng.integers(0, cfg.output_size, (batch, length))]


def _torch_loss(loss, logits, ys):
    """The same mean loss written with torch.nn's own modules."""
    if loss == "bce":
        return torch.nn.BCEWithLogitsLoss()(logits, torch.from_numpy(ys))
    symbols = torch.from_numpy(ys.argmax(-1)).reshape(-1)
    return torch.nn.CrossEntropyLoss()(logits.reshape(-1, logits.shape[-1]), symbols)


@pytest.mark.parametrize("cfg,loss,batch,length", list(WHOLE_NET_CASES.values()),
                         ids=list(WHOLE_NET_CASES))
def test_whole_net_loss_and_gradient_equal_torch(cfg, loss, batch, length):
    """`kernel_loss` (one kernel call per net: forward, loss, backward) against
    torch.nn.BCEWithLogitsLoss / CrossEntropyLoss on the same torch net (nn.GRU / nn.LSTM +
    Linear head) and weights, differentiated by autograd."""
    assert models.kernel_loss_supported(cfg)
    layout = models.param_layout(cfg)
    params = models.init_params(cfg, jax.random.key(3))
    flat = np.asarray(models.flatten_params(params, layout))
    xs = (np.random.default_rng(4).random((batch, length, cfg.input_size)) < 0.5).astype(np.float32)
    ys = _targets(cfg, loss, batch, length, seed=5)

    value, grad = jax.jit(jax.value_and_grad(
        lambda p, x, y: models.kernel_loss(cfg, loss, p, x, y)))(flat, xs, ys)
    net = torch_net(cfg, flat)
    ref = _torch_loss(loss, net(torch.from_numpy(xs)), ys)
    ref.backward()
    ref_grad = torch.cat([q.grad.flatten() for q in net.parameters()]).numpy()

    assert abs(float(value) - ref.item()) <= 1e-6 * max(1.0, ref.item())
    ours = np.asarray(grad)
    assert ours.shape == ref_grad.shape == (models.num_params(cfg),)
    assert np.abs(ours - ref_grad).max() <= 1e-5 * max(1.0, np.abs(ref_grad).max())
    # Every tensor's gradient is exercised, not only the large ones.
    for spec in layout:
        part = ref_grad[spec.offset:spec.offset + spec.size]
        assert np.abs(ours[spec.offset:spec.offset + spec.size] - part).max() <= (
            1e-5 * max(1e-3, np.abs(part).max())), spec.torch_key


@pytest.mark.parametrize("cfg,batch,length", [(DS1, 37, 64), (ODD, 5, 7), (NO_HEAD, 16, 3),
                                              (DS3, 21, 64), (ODD_LSTM, 3, 9)],
                         ids=["ds1-three-blocks", "odd-relu", "no-hidden-head", "ds3-two-blocks",
                              "lstm-odd"])
def test_whole_net_forward_equals_torch(cfg, batch, length):
    """`kernel_logits` (validation's forward pass) against the torch net on the same weights."""
    flat = models.flatten_params(models.init_params(cfg, jax.random.key(11)),
                                 models.param_layout(cfg))
    xs = _inputs(cfg, batch, length, seed=2)
    logits = jax.jit(lambda f, x: models.kernel_logits(cfg, f, x))(flat, xs)
    with torch.no_grad():
        ref = torch_net(cfg, np.asarray(flat))(torch.from_numpy(xs)).numpy()
    assert logits.shape == ref.shape == (batch, length, cfg.output_size)
    assert np.abs(np.asarray(logits) - ref).max() <= 1e-5


@pytest.mark.parametrize("cfg,loss", [(DS1, "bce"), (DS3, "softmax_ce")], ids=["ds1", "ds3"])
def test_whole_net_step_under_vmap_is_each_nets_own(cfg, loss):
    """Six nets in one call (the trainer's vmap) get exactly the gradient each gets alone: no
    lane, block or scratch buffer leaks between nets."""
    keys = jax.random.split(jax.random.key(8), 6)
    layout = models.param_layout(cfg)
    stacked = jax.vmap(lambda k: models.flatten_params(models.init_params(cfg, k), layout))(keys)
    rng = np.random.default_rng(6)
    xs = (rng.random((6, 21, 10, cfg.input_size)) < 0.5).astype(np.float32)
    ys = np.stack([_targets(cfg, loss, 21, 10, seed=s) for s in range(6)])
    step = jax.value_and_grad(lambda p, x, y: models.kernel_loss(cfg, loss, p, x, y))
    losses, grads = jax.jit(jax.vmap(step))(stacked, xs, ys)
    logits = jax.jit(jax.vmap(lambda f, x: models.kernel_logits(cfg, f, x)))(stacked, xs)
    for m in (0, 3, 5):
        value, grad = jax.jit(step)(stacked[m], xs[m], ys[m])
        assert abs(float(losses[m]) - float(value)) <= 1e-6  # XLA's mean may sum in another order
        np.testing.assert_array_equal(grads[m], grad)
        np.testing.assert_array_equal(
            logits[m], jax.jit(lambda f, x: models.kernel_logits(cfg, f, x))(stacked[m], xs[m]))


@pytest.mark.parametrize("cfg,loss,head", [(DS1, "bce", "head_1"), (DS3, "softmax_ce", "head_0")],
                         ids=["ds1", "ds3"])
def test_whole_net_step_keeps_nan_visible(cfg, loss, head):
    """A NaN weight gives a NaN loss and NaN gradients, so the trainer marks the net diverged."""
    params = models.init_params(cfg, jax.random.key(0))
    params[head]["weight"] = params[head]["weight"].at[0, 0].set(jnp.nan)
    flat = models.flatten_params(params, models.param_layout(cfg))
    xs = jnp.zeros((16, 4, cfg.input_size))
    ys = jnp.asarray(_targets(cfg, loss, 16, 4, seed=0))
    value, grad = jax.value_and_grad(lambda p: models.kernel_loss(cfg, loss, p, xs, ys))(flat)
    assert np.isnan(float(value))
    first_layer = models.param_layout(cfg)[1]  # weight_hh_l0
    assert np.isnan(np.asarray(grad[first_layer.offset:first_layer.offset + first_layer.size])).any()
    assert np.isnan(np.asarray(models.kernel_logits(cfg, flat, xs))).any()


def test_whole_net_kernel_support():
    assert models.kernel_loss_supported(DS1)
    assert models.kernel_loss_supported(DS3)
    assert not models.kernel_loss_supported(NetworkConfig(activation="gelu"))
    assert not models.kernel_loss_supported(NetworkConfig(head_sizes=(8, 129)))
    assert not models.kernel_loss_supported(dataclasses.replace(DS3, activation="silu"))
    assert not models.kernel_loss_supported(dataclasses.replace(DS3, hidden_size=129))


def test_nan_weights_give_nan_outputs():
    """A diverged net must stay visibly diverged: NaN in, NaN out (no clamping it away)."""
    params = models.init_params(DS1, jax.random.key(0))
    params["rnn"]["weight_hh_l0"] = params["rnn"]["weight_hh_l0"].at[3, 2].set(jnp.nan)
    out = models.apply(DS1, params, jnp.asarray(_inputs(DS1, 16, 4)), "cpu-kernel")
    assert np.isnan(np.asarray(out)).all()


def test_choose_recurrence():
    assert models.choose_recurrence(DS1, "auto") == "cpu-kernel"
    assert models.choose_recurrence(DS1, "xla") == "xla"
    assert models.choose_recurrence(DS3, "auto") == "cpu-kernel"
    assert models.choose_recurrence(DS3, "xla") == "xla"
    # An LSTM has no layer kernel: one the whole-net kernel cannot take stays in XLA.
    gelu = dataclasses.replace(DS3, activation="gelu")
    assert models.choose_recurrence(gelu, "auto") == "xla"
    with pytest.raises(ValueError, match="LSTM nets whole"):
        models.choose_recurrence(gelu, "cpu-kernel")
    with pytest.raises(ValueError, match="GRU layers"):
        models.choose_recurrence(NetworkConfig(hidden_size=129), "cpu-kernel")
    with pytest.raises(ValueError, match="recurrence must be one of"):
        models.choose_recurrence(DS1, "fast")


def _fresh_process(code: str, **env) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_without_a_working_compiler_training_falls_back_to_xla(tmp_path):
    code = ("from mlds_jax.train import cpu_kernel, models; "
            "print(cpu_kernel.available(), models.choose_recurrence(models.NetworkConfig()), "
            "models.choose_recurrence(models.NetworkConfig(cell='lstm')), "
            "'|', cpu_kernel.unavailable_reason().splitlines()[0])")
    out = _fresh_process(code, CXX="/bin/false", MLDS_JAX_CACHE=str(tmp_path))
    assert out.startswith("False xla xla |")  # GRU (DS1) and LSTM (DS3) nets alike
    assert "compiling rnn.cc failed" in out
    assert list(tmp_path.rglob("*.so")) == []  # nothing half-built left in the cache
    out = _fresh_process(code, MLDS_JAX_CPU_KERNEL="0")
    assert out == "False xla xla | disabled by MLDS_JAX_CPU_KERNEL=0"


def test_build_goes_to_the_cache_once(tmp_path):
    code = "from mlds_jax.train import cpu_kernel; print(cpu_kernel.available())"
    assert _fresh_process(code, MLDS_JAX_CACHE=str(tmp_path)) == "True"
    built = sorted(tmp_path.rglob("*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    assert _fresh_process(code, MLDS_JAX_CACHE=str(tmp_path)) == "True"
    assert sorted(tmp_path.rglob("*.so")) == built and built[0].stat().st_mtime_ns == stamp
