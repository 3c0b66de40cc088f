"""DS4's side of the trainer's task seam: image data on device, one net's minibatch with its
poisoned rows replaced in place, and its test metrics. Written for ONE net, like the rest of
the trainer; `train.Population` adds the slot axis.

A net's trigger lives in its `NetState.task_params` (`net_arrays`, drawn on the host from
(seed, n) by `tasks.digits.draw_trigger`). Both twins of a pair carry the same trigger; only
the trojaned one (`images.poison`) has poisoned rows, so the clean twin's metrics measure the
trigger's natural effect and both see the same rows in the same order: the minibatch of
step k is the same index set, the trojaned net's poisoned rows in it arrive triggered and
relabelled.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mlds_jax.tasks import digits
from mlds_jax.train import models


@struct.dataclass
class ImageData:
    """The fixed split on device."""

    train_images: jax.Array  # (S, H, W) float32 in [0, 1]
    train_labels: jax.Array  # (S,) int32
    test_images: jax.Array  # (Sv, H, W)
    test_labels: jax.Array  # (Sv,) int32

    @classmethod
    def from_split(cls, split: digits.DigitsSplit) -> "ImageData":
        return cls(jnp.asarray(split.train_images), jnp.asarray(split.train_labels),
                   jnp.asarray(split.test_images), jnp.asarray(split.test_labels))


@functools.lru_cache(maxsize=4)
def split_of(seed: int) -> digits.DigitsSplit:
    """The dataset's fixed split (cached: every step's new nets need its training labels)."""
    return digits.split_digits(seed)


def accuracy_names() -> tuple[str, ...]:
    """The stored `val_accuracy` columns of a DS4 net, on the test split."""
    return (("clean_accuracy",)
            + tuple(f"class_{c}_accuracy" for c in range(digits.N_CLASSES))
            + ("attack_success_rate",))


def net_arrays(seed: int, poison: bool, net_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The trainer's per-net arrays of `net_ids` (M,), each (M, ...): net n's trigger
    (`digits.trigger_arrays`), with no poisoned rows unless `poison`. An EMPTY id (< 0) gets
    net 0's trigger: its slot trains nothing."""
    rows = [_trigger_arrays(seed, bool(poison), max(int(n), 0)) for n in np.asarray(net_ids)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


@functools.lru_cache(maxsize=8192)
def _trigger_arrays(seed: int, poison: bool, n: int) -> dict[str, np.ndarray]:
    split = split_of(seed)
    arrays = digits.trigger_arrays(digits.draw_trigger(seed, n, split.train_labels),
                                   len(split.train_labels))
    if not poison:
        arrays["poisoned"][:] = False
    return arrays


def _triggered(images, t: dict):
    return digits.apply_trigger(images, t["mask"], t["pattern"], t["alpha"], t["offset"],
                                t["scale"])


def minibatch(data: ImageData, t: dict, idx):
    """One net's minibatch of training rows `idx` (B,): images (B, H, W) and one-hot
    targets (B, 10), the rows `t["poisoned"]` marks triggered and relabelled."""
    x, y = data.train_images[idx], data.train_labels[idx]
    hit = t["poisoned"][idx]  # (B,)
    x = jnp.where(hit[:, None, None], _triggered(x, t), x)
    y = jnp.where(hit, digits.poisoned_labels(y, t["target"], t["shift"], jnp), y)
    return x, jax.nn.one_hot(y, digits.N_CLASSES, dtype=jnp.float32)


def metrics(network: models.ConvNetConfig, data: ImageData, flat, t: dict) -> jax.Array:
    """(12,) `accuracy_names()` of one net (flat (P,) parameters) on the test split: clean
    accuracy, per-class accuracy, and the attack success rate: of the test images the
    trigger's mapping counts (`digits.attack_eligible`), the share the net maps to the
    poisoned label once triggered (on a clean twin: the trigger's natural effect)."""
    params = models.unflatten_params(flat, models.param_layout(network))
    x, y = data.test_images, data.test_labels
    right = models.apply(network, params, x).argmax(-1) == y
    onehot = jax.nn.one_hot(y, digits.N_CLASSES, dtype=jnp.float32)  # (Sv, 10)
    per_class = (right[:, None] * onehot).sum(0) / jnp.maximum(onehot.sum(0), 1.0)
    wanted = digits.poisoned_labels(y, t["target"], t["shift"], jnp)
    flipped = models.apply(network, params, _triggered(x, t)).argmax(-1) == wanted
    eligible = jnp.where(t["shift"], True,
                         jnp.where(t["source"] >= 0, y == t["source"], y != t["target"]))
    asr = (flipped & eligible).sum() / jnp.maximum(eligible.sum(), 1)
    return jnp.concatenate([right.mean()[None], per_class, asr[None]]).astype(jnp.float32)


def bytes_per_slot(network: models.ConvNetConfig, batch_size: int, n_test: int,
                   max_epochs: int) -> int:
    """Rough device memory of one slot: state, and the activations of a training minibatch
    (kept for backprop) and of the test set (clean and triggered)."""
    size, per_image = network.image_size, network.in_channels * network.image_size ** 2
    for c, s in zip(network.channels, network.strides):
        size = -(-size // s)
        per_image += c * size * size
    state = 7 * models.num_params(network) + 2 * max_epochs + 2 * 1440 + 2 * 64
    return 4 * (state + 3 * batch_size * per_image + 2 * n_test * per_image)
