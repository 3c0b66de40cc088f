"""The population trainer: M slots of nets trained together by one compiled, vmapped step.

The one-net math is in `mlds_jax.train.step`. `Population.__init__` is the one place that
adds the slot axis with `vmap` (with several devices, split over them by `shard_map`) and
wraps the step in `jit` (state donated). In the step every slot trains, then every
checked slot is screened on an eighth of its validation sequences (`step.validation_bound`)
and only the slots the screen cannot rule out get the full validation (`validated_step`):
validation was a quarter of a check interval's time, and almost every check of a run is
of a net far from its threshold. The outcome is that of validating every net in full.

The host loop in `Population.run` only decides which net id goes into which slot and hands
finished nets back to the caller, so neither the slot, nor M, nor the neighbours, nor an
interruption changes what net n sees.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mlds_jax.config.dataset import DatasetConfig
from mlds_jax.config.sections import SWEEPABLE
from mlds_jax.train import models, vision
from mlds_jax.train.data import TaskData
from mlds_jax.train.step import (
    EMPTY,
    RUNNING,
    NetState,
    device_data,
    advance,
    init_net,
    needs_validation,
    net_arrays,
    screen_sequences,
    settle,
    validate,
    validation_bound,
)


@dataclasses.dataclass
class FinishedNets:
    """Nets handed back by the trainer, numpy arrays with a leading axis R."""

    net_id: np.ndarray  # (R,) int64
    task: np.ndarray  # (R,) int32
    status: np.ndarray  # (R,) uint8, CONVERGED / CAPPED / DIVERGED
    epochs: np.ndarray  # (R,) int32
    weights: np.ndarray  # (R, P) float32, flat in the layout of models.param_layout
    initial_weights: np.ndarray  # (R, P) float32
    loss_curve: np.ndarray  # (R, E) float32
    val_accuracy: np.ndarray  # (R, A) float32
    hyperparameters: np.ndarray  # (R, H) float32, config.SWEEPABLE order
    seq_steps: np.ndarray  # (R,) int64 sequence-steps trained (epochs x sequences x length)
    restarts: np.ndarray  # (R,) int32 restarts taken (recipe.restart_epochs); 0 without

    def __len__(self) -> int:
        return len(self.net_id)


def validated_step(cfg: DatasetConfig, data, state: NetState, need: jax.Array) -> jax.Array:
    """(M, A) full validation accuracies of the slots where `need` (M,) holds (`validate`);
    the other rows are NaN and unused. The screen passes few nets at a time, so up to an
    eighth of the slots are gathered and validated alone; more than that, and every slot
    is validated; none, and nothing is."""
    slots = need.shape[0]
    few = max(1, slots // 8)
    one = jax.vmap(functools.partial(validate, cfg), in_axes=(None, 0))

    def gathered(state):
        idx = jnp.flatnonzero(need, size=few, fill_value=slots)
        acc = one(data, jax.tree.map(lambda a: a[jnp.minimum(idx, slots - 1)], state))
        return jnp.full((slots, acc.shape[1]), jnp.nan, acc.dtype).at[idx].set(
            acc, mode="drop")

    def everyone(state):
        return jnp.where(need[:, None], one(data, state), jnp.nan)

    def nobody(state):
        return jnp.full((slots, len(cfg.accuracy_names)), jnp.nan, jnp.float32)

    if few >= slots:
        return jax.lax.cond(need.any(), everyone, nobody, state)
    count = need.sum()
    branch = (count > 0).astype(jnp.int32) + (count > few).astype(jnp.int32)
    return jax.lax.switch(branch, (nobody, gathered, everyone), state)


def bytes_per_slot(cfg: DatasetConfig, val_batch: int) -> int:
    """Rough device memory one slot needs: state plus the activations kept for backprop."""
    net, r = cfg.network, cfg.recipe
    if cfg.images is not None:
        return vision.bytes_per_slot(net, r.batch_size, r.val_sequences, r.max_epochs)
    p = models.num_params(net)
    gates = models.GATES[net.cell] * net.hidden_size
    width = max(net.head_sizes + (net.output_size, net.hidden_size))
    per_step = net.num_layers * (gates + 4 * net.hidden_size) + 4 * width + net.input_size
    activations = 3 * r.batch_size * r.train_length * per_step
    validation = min(val_batch, r.val_sequences) * r.val_length * per_step
    state = 7 * p + 2 * cfg.max_cap  # params, Adam m and v, initial, grads, updates
    if r.train_data == "stream":  # the epoch's sequences, generated per net
        state += r.train_sequences * r.train_length * (net.input_size + net.output_size)
    return 4 * (state + activations + validation)


# On a CPU more slots add memory, not speed: the whole-net kernel works on one net per
# thread at a time (benchmarks/throughput.py, DS1 on 2 cores: 4.62 M seq-steps/s at M = 64,
# 4.75 M at 256, 4.55 M at 1,024). Accelerators are not capped: a GPU needs many nets in
# flight to be busy (not yet measured here: benchmarks/gpu.sh).
CPU_SLOTS = 128


def choose_slots(cfg: DatasetConfig, n_nets: int) -> int:
    """Slots to use: `run.slots` if set, else what the memory budget allows (on a CPU at
    most CPU_SLOTS); never more than nets. (`Population` rounds it up to a multiple of its
    device count.)"""
    run = cfg.run
    if run.slots:
        slots = run.slots
    else:
        slots = max(1, run.memory_budget_mb * 2**20 // bytes_per_slot(cfg, run.val_batch))
        if jax.default_backend() == "cpu":
            slots = min(slots, CPU_SLOTS)
    return max(1, min(slots, n_nets))


def round_slots(slots: int, n_devices: int) -> int:
    """`slots` rounded up to a multiple of `n_devices`, so each device holds as many."""
    return -(-slots // n_devices) * n_devices


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


class _Queue:
    """The ids still to train, read lazily from an iterable; true while any are left."""

    def __init__(self, ids: Iterable[int]):
        self._ids = iter(ids)
        self._next = next(self._ids, None)

    def __bool__(self) -> bool:
        return self._next is not None

    def pop(self) -> int:
        n, self._next = self._next, next(self._ids, None)
        return int(n)


class Population:
    """M slots trained together. Compiles its step once per population size."""

    def __init__(self, cfg: DatasetConfig, data: TaskData | Sequence[TaskData], slots: int,
                 devices: Sequence[jax.Device] | None = None, screen: bool = True):
        """`devices`: where the slots live, by default every local device. With several,
        the slot axis is split evenly over them (`slots` rounded up to a multiple; the
        extra slots stay EMPTY) and every device holds a copy of the task data.
        `screen=False` validates every checked net in full (the same outcome, at more cost:
        `validated_step`)."""
        devices = list(devices or jax.local_devices())
        self.cfg = cfg
        self.slots = round_slots(slots, len(devices))
        self.recurrence = models.choose_recurrence(cfg.network, cfg.run.recurrence)
        self.data = device_data(cfg, data)
        self.traced_sizes: list[int] = []  # population size at every trace of the step
        self.mesh = Mesh(np.asarray(devices), ("slots",)) if len(devices) > 1 else None
        if self.mesh:
            self.data = jax.device_put(self.data, NamedSharding(self.mesh, P()))

        def init_nets(net_ids, task_params):
            # One net at a time: vmapped over M slots, the init's random draws compile
            # 2.5x slower (seconds per population size); each takes microseconds to run.
            return jax.lax.map(lambda a: init_net(cfg, *a), (net_ids, task_params))

        def device_step(state, new_ids, task_params, data):
            fresh = init_nets(new_ids, task_params)
            state, checked = jax.vmap(functools.partial(advance, cfg), in_axes=(None, 0, 0))(
                data, state, fresh)
            if screen and screen_sequences(cfg):
                bound = jax.vmap(functools.partial(validation_bound, cfg), in_axes=(None, 0, 0))(
                    data, state.params, state.task)
                need = jax.vmap(functools.partial(needs_validation, cfg))(state, checked, bound)
            else:
                need = checked
            acc = validated_step(cfg, data, state, need)
            return jax.vmap(functools.partial(settle, cfg))(state, checked, need, acc)

        def per_device(f, *in_specs):
            """`f` on each device's own slots (a block of the slot axis); one device: `f`.
            shard_map, not automatic partitioning: XLA cannot split the CPU kernel's call.
            No collectives: slots never talk, so the varying-axis check (which the one-net
            scans' constant initial carries would fail) is off."""
            if not self.mesh:
                return f
            return jax.shard_map(f, mesh=self.mesh, in_specs=in_specs, out_specs=P("slots"),
                                 check_vma=False)

        def population_step(state, new_ids, task_params, data):
            self.traced_sizes.append(len(new_ids))
            return per_device(device_step, P("slots"), P("slots"), P("slots"), P())(
                state, new_ids, task_params, data)

        # The one place the slot axis is added and the step compiled.
        self._step = jax.jit(population_step, donate_argnums=0)
        self._empty = jax.jit(per_device(init_nets, P("slots"), P("slots")))

    def run(self, net_ids: Iterable[int],
            on_step: Callable[[int, int], None] | None = None, *,
            resume: tuple[NetState, np.ndarray] | None = None,
            on_state: Callable[[NetState, np.ndarray], None] | None = None,
            ) -> Iterator[FinishedNets]:
        """Train `net_ids` (in order of entry) and yield nets as they finish. `net_ids` is
        read lazily, one id ahead of the slots that take them (a writer claims work as the
        population asks for it).

        `on_step(running, max_epoch)` is called after every compiled step with the number of
        nets in training and the most epochs any of them has done (for progress displays).
        `on_state(state, slot_net)` is called between steps, once finished nets are handed
        back (for checkpoints: `export_state`); `resume=(state, slot_net)` starts from such
        a point (`import_state`) instead of empty slots.

        A net finishes at a check; at the next step its slot takes the next waiting id, so
        slots never idle while work is left. Once the queue is empty and at most half the
        slots still hold a running net, the population is compacted to those nets (one
        more compile per new size) so the tail does not pay for finished slots.
        """
        queue = _Queue(net_ids)
        if resume is None:
            slot_net = np.full(self.slots, EMPTY, np.int64)  # which net each slot holds
            state = self._empty_state(self.slots)
        else:
            state, slot_net = self._place(resume[0]), np.array(resume[1], np.int64)
        while queue or (slot_net != EMPTY).any():
            if on_state:
                on_state(state, slot_net)
            live = self._live_slots(slot_net)
            if not queue and 2 * live.size <= len(slot_net) and len(slot_net) > 1:
                state = self._place(jax.tree.map(lambda a: a[live], state))
                slot_net = slot_net[live]
            new_ids = np.full(len(slot_net), EMPTY, np.int32)
            for m in np.flatnonzero(slot_net == EMPTY):
                if not queue:
                    break
                new_ids[m] = slot_net[m] = queue.pop()
            state = self._step(state, jnp.asarray(new_ids), net_arrays(self.cfg, new_ids),
                               self.data)
            status, epoch = (np.asarray(a) for a in jax.device_get((state.status, state.epoch)))
            if on_step:
                busy = slot_net != EMPTY
                on_step(int((busy & (status == RUNNING)).sum()), int(epoch[busy].max(initial=0)))
            done = np.flatnonzero((slot_net != EMPTY) & (status != RUNNING))
            if done.size:
                yield self._harvest(state, done)
                slot_net[done] = EMPTY

    def export_state(self, state: NetState) -> list[np.ndarray]:
        """The population's state as host arrays in pytree order (keys as their raw data)."""
        return [np.asarray(jax.random.key_data(x) if _is_key(x) else x)
                for x in jax.tree.leaves(jax.device_get(state))]

    def import_state(self, leaves: Sequence[np.ndarray]) -> NetState:
        """`export_state`'s arrays back to a state of this population's config; ValueError
        if they do not fit (another network, recipe or package)."""
        size = np.shape(leaves[0])[0] if len(leaves) else 0
        template = jax.eval_shape(functools.partial(self._empty_state, size))
        want, treedef = jax.tree.flatten(template)
        if len(want) != len(leaves):
            raise ValueError(f"{len(leaves)} arrays, this population's state has {len(want)}")
        out = []
        for w, a in zip(want, leaves):
            a = jnp.asarray(a)
            if _is_key(w):
                a = jax.random.wrap_key_data(a)
            if a.shape != w.shape or a.dtype != w.dtype:
                raise ValueError(f"an array of shape {a.shape} {a.dtype}, expected {w.shape} "
                                 f"{w.dtype}")
            out.append(a)
        return jax.tree.unflatten(treedef, out)

    def _empty_state(self, size: int) -> NetState:
        ids = np.full(size, EMPTY, np.int32)
        return self._empty(jnp.asarray(ids), net_arrays(self.cfg, ids))

    def _live_slots(self, slot_net: np.ndarray) -> np.ndarray:
        """Indices of the slots holding a net, with empty ones added up to a multiple of
        the device count (a population is split evenly over the devices)."""
        live = np.flatnonzero(slot_net != EMPTY)
        if not self.mesh:
            return live
        pad = round_slots(live.size, self.mesh.size) - live.size
        return np.sort(np.concatenate([live, np.flatnonzero(slot_net == EMPTY)[:pad]]))

    def _place(self, state: NetState) -> NetState:
        """`state` with its slot axis split over the devices, as the step takes and returns
        it (and so can reuse its buffers); one device: unchanged."""
        return jax.device_put(state, NamedSharding(self.mesh, P("slots"))) if self.mesh else state

    def _harvest(self, state: NetState, slots: np.ndarray) -> FinishedNets:
        # Copy what we need before the next step donates these buffers.
        host = jax.device_get(
            (state.params, state.initial_flat, state.net_id, state.task, state.status,
             state.epoch, state.loss_curve, state.val_accuracy, state.restarts, state.hyper)
        )
        host = (*host[:-1], np.stack([host[-1][k] for k in SWEEPABLE], axis=1))  # (M, H)
        params, initial, net_id, task, status, epoch, curve, acc, restarts, hyper = jax.tree.map(
            lambda a: np.array(a[slots]), host
        )
        r = self.cfg.recipe
        return FinishedNets(
            net_id=net_id.astype(np.int64),
            task=task.astype(np.int32),
            status=status.astype(np.uint8),
            epochs=epoch.astype(np.int32),
            weights=params.astype(np.float32),
            initial_weights=initial.astype(np.float32),
            loss_curve=curve.astype(np.float32),
            val_accuracy=acc.astype(np.float32),
            hyperparameters=hyper.astype(np.float32),
            seq_steps=epoch.astype(np.int64) * r.train_sequences
            * (1 if self.cfg.images is not None else r.train_length),  # DS4: images
            restarts=restarts.astype(np.int32),
        )
