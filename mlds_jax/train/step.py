"""The math of one net's training: its state, its initialisation, one epoch, validation and
the stop rule. Everything here is written for ONE net (`NetState` holds one net's params,
Adam state, counters and flags; `advance` trains it `check_every` epochs, `validation_bound`
screens it, `validate` runs its full validation, `settle` applies the stop rule);
`mlds_jax.train.population` adds the slot axis with `vmap`, chooses which slots the full
validation runs on, and compiles it.

Randomness of net n derives from `(seed, n)` alone: `fold_in(key(seed), n)` split by
purpose into its init key and its data-order key; epoch e's minibatch order is
`permutation(fold_in(order_key, e))`. With streamed data (`mlds_jax.train.stream`) epoch e's
sequences come from `(seed, task, e)`, the same for every net of the task. Neither the
slot, nor M, nor the neighbours, nor an interruption changes what net n sees.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from mlds_jax.config.dataset import DatasetConfig
from mlds_jax.tasks.automata import make_automata, stack_automata
from mlds_jax.train import models, stream, vision
from mlds_jax.train.data import TaskData

EMPTY = -1  # net_id of a slot that holds no net
# Per-net status codes; the store uses the same numbers for finished nets.
RUNNING, CONVERGED, CAPPED, DIVERGED = 0, 1, 2, 3
# Purpose tags folded into a net's key. RECIPE_INIT_KEY draws what the recipe's
# initialisation adds to PyTorch's defaults, so a net with none of it is unchanged.
INIT_KEY, ORDER_KEY, RECIPE_INIT_KEY, RESTART_KEY = 0, 1, 2, 3


def net_key(seed: int, net_id) -> jax.Array:
    """The root key of net `net_id` of the dataset with `seed`."""
    return jax.random.fold_in(jax.random.key(seed), net_id)


@struct.dataclass
class NetState:
    """One net in training. In a population every field has a leading slot axis (M, ...)."""

    params: jax.Array  # (M, P) flat parameters, in models.param_layout order (the store's)
    opt_state: optax.OptState  # Adam moments (M, P)
    initial_flat: jax.Array  # (M, P) params at initialisation, for the store
    net_id: jax.Array  # (M,) int32, EMPTY for an unused slot
    task: jax.Array  # (M,) int32 task index
    order_key: jax.Array  # (M,) typed key for the minibatch order
    epoch: jax.Array  # (M,) int32 epochs trained
    status: jax.Array  # (M,) int32 RUNNING / CONVERGED / CAPPED / DIVERGED
    loss_curve: jax.Array  # (M, E) float32 mean training loss per epoch, NaN after the stop
    val_accuracy: jax.Array  # (M, A) float32 cfg.accuracy_names at the last check
    level: jax.Array  # (M,) float32 curriculum level (stream.Curriculum), 1: the full task
    restarts: jax.Array  # (M,) int32 restarts taken (recipe.restart_epochs)
    start_epoch: jax.Array  # (M,) int32 the epoch of the net's last (re)start
    hyper: dict[str, jax.Array]  # config.SWEEPABLE name -> (M,) float32, the net's recipe values
    # What the task family draws per net on the host (`net_arrays`; DS4: the trigger,
    # vision.net_arrays), name -> (M, ...); empty for sequence tasks.
    task_params: dict[str, jax.Array] = struct.field(default_factory=dict)


@struct.dataclass
class TrainData:
    """Every task's data on device, stacked on a leading task axis K, with A validation
    sets per task (DS1: one; DS2: clean and triggered). The training data is either a
    fixed set or (`stream` set) generated every epoch inside the step."""

    train_inputs: jax.Array | None  # (K, S, T, I); None when streamed
    train_targets: jax.Array | None  # (K, S, T, O)
    val_inputs: jax.Array  # (K, A, Sv, Tv, I)
    val_targets: jax.Array  # (K, A, Sv, Tv, O)
    stream: stream.StreamTasks | None = None  # what the stream generates from

    @classmethod
    def from_task_data(cls, sets: TaskData | Sequence[TaskData],
                       streamed: stream.StreamTasks | None = None) -> "TrainData":
        """One TaskData, or several sharing one training set and differing in validation;
        with `streamed`, their training sets are not used."""
        sets = [sets] if isinstance(sets, TaskData) else list(sets)
        f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
        return cls(
            train_inputs=None if streamed else f32(sets[0].train_inputs),
            train_targets=None if streamed else f32(sets[0].train_targets),
            val_inputs=f32(np.stack([d.val_inputs for d in sets], axis=1)),
            val_targets=f32(np.stack([d.val_targets for d in sets], axis=1)),
            stream=streamed,
        )


def _optimizer(cfg: DatasetConfig, hyper: dict[str, jax.Array]) -> optax.GradientTransformation:
    """Adam with one net's recipe values (traced scalars): global-norm clipping, decoupled
    weight decay, linear warm-up, then (decay_half_life > 0) halving every decay_half_life
    epochs down to decay_floor x the rate. With clip_norm, weight_decay, warmup_epochs and
    decay_half_life at 0 every extra stage is an exact identity, so this is plain
    `optax.adam(learning_rate)`."""
    steps = cfg.recipe.steps_per_epoch
    warmup_steps = hyper["warmup_epochs"] * steps
    half_life = hyper["decay_half_life"] * steps

    def learning_rate(count):
        warm = jnp.minimum(1.0, (count + 1) / jnp.maximum(warmup_steps, 1.0))
        after = jnp.maximum(count + 1 - warmup_steps, 0.0) / jnp.maximum(half_life, 1.0)
        decay = jnp.where(half_life > 0, jnp.maximum(0.5 ** after, hyper["decay_floor"]), 1.0)
        return hyper["learning_rate"] * warm * decay

    return optax.chain(
        optax.clip_by_global_norm(jnp.where(hyper["clip_norm"] > 0, hyper["clip_norm"], jnp.inf)),
        optax.scale_by_adam(),
        optax.add_decayed_weights(hyper["weight_decay"]),
        optax.scale_by_learning_rate(learning_rate),
    )


def net_hyperparameters(cfg: DatasetConfig, net_id) -> dict[str, jax.Array]:
    """Net `net_id`'s recipe values (config.SWEEPABLE name -> float32 scalar): its task's
    (net_id % num_tasks) at grid point (net_id // num_tasks) % G, from net_id alone."""
    table = cfg.hyperparameter_table()
    n = jnp.maximum(net_id, 0)
    task, point = n % cfg.num_tasks, (n // cfg.num_tasks) % len(cfg.grid)
    return {k: jnp.asarray(v, jnp.float32)[task, point] for k, v in table.items()}


def haar_orthogonal(key, n: int) -> jax.Array:
    """(n, n) orthogonal, Haar-distributed: the Q of a standard normal matrix's QR with R's
    diagonal positive, the matrix `jax.nn.initializers.orthogonal()(key, (n, n))` returns.
    Built by Gram-Schmidt applied twice per column (matmuls only), because LAPACK's batched
    QR deadlocked XLA's CPU thread pool inside the vmapped population program (a DS3 run
    with `recurrent_gain` > 0 hung at 0% CPU in its first device_get)."""
    a = jax.random.normal(key, (n, n), jnp.float32)

    def column(j, q):  # q: (n, n), columns 0..j-1 orthonormal, the rest zero
        v = a[:, j]
        for _ in range(2):  # "twice is enough" (Giraud et al. 2005)
            v = v - q @ (q.T @ v)
        return q.at[:, j].set(v / jnp.linalg.norm(v))

    return jax.lax.fori_loop(0, n, column, jnp.zeros((n, n), jnp.float32))


def recipe_init(cfg: DatasetConfig, params: dict, hyper: dict[str, jax.Array], key) -> dict:
    """PyTorch's default init of one net (`params`, a pytree) changed as the recipe says:
    in every recurrent layer, `memory_gate_bias` added to the memory gate's part of bias_hh
    (GRU z, LSTM f: rows H:2H in both gate orders), chrono init of that part (and zero in
    bias_ih) when `chrono_max` > 2, each gate's block of weight_hh orthogonal x
    `recurrent_gain` when that is > 0, then `candidate_self_weight` added to the diagonal of
    its candidate block (GRU n, LSTM g: rows 2H:3H); every weight_ih times `input_gain`,
    every head weight times `head_gain`. The defaults (0, and gains 1) leave the tensors
    bitwise unchanged."""
    if "rnn" not in params:  # no recurrent layers (DS4's CNN): PyTorch's init as it is
        return params
    net = cfg.network
    h, gates = net.hidden_size, models.GATES[net.cell]
    rnn = dict(params["rnn"])
    for layer in range(net.num_layers):
        k_chrono, k_orth = jax.random.split(jax.random.fold_in(key, layer))
        b_ih, b_hh = rnn[f"bias_ih_l{layer}"], rnn[f"bias_hh_l{layer}"]
        t_max = jnp.maximum(hyper["chrono_max"], 2.0 + 1e-3)
        chrono = jnp.log(jax.random.uniform(k_chrono, (h,), jnp.float32, 1.0, t_max - 1.0))
        use_chrono = hyper["chrono_max"] > 2
        mem = slice(h, 2 * h)
        b_hh = b_hh.at[mem].set(jnp.where(use_chrono, chrono, b_hh[mem])
                                + hyper["memory_gate_bias"])
        b_ih = b_ih.at[mem].set(jnp.where(use_chrono, 0.0, b_ih[mem]))
        orth = jax.vmap(lambda k: haar_orthogonal(k, h))(jax.random.split(k_orth, gates))
        w_hh = jnp.where(hyper["recurrent_gain"] > 0,
                         hyper["recurrent_gain"] * orth.reshape(-1, h), rnn[f"weight_hh_l{layer}"])
        rnn[f"weight_hh_l{layer}"] = w_hh.at[2 * h:3 * h].add(
            hyper["candidate_self_weight"] * jnp.eye(h, dtype=w_hh.dtype))
        rnn[f"bias_ih_l{layer}"], rnn[f"bias_hh_l{layer}"] = b_ih, b_hh
        rnn[f"weight_ih_l{layer}"] = hyper["input_gain"] * rnn[f"weight_ih_l{layer}"]
    head = {name: {**p, "weight": hyper["head_gain"] * p["weight"]}
            for name, p in params.items() if name != "rnn"}
    return {**params, **head, "rnn": rnn}


def _init_flat(cfg: DatasetConfig, net_id, hyper: dict[str, jax.Array], restart) -> jax.Array:
    """Net `net_id`'s flat initial parameters at its start number `restart` (a traced int32;
    0: the first start, drawn from (seed, n) as always; k > 0 from (seed, n, k))."""
    key = net_key(cfg.seed, jnp.maximum(net_id, 0))
    again = jax.random.fold_in(jax.random.fold_in(key, RESTART_KEY), restart)
    key = jax.random.wrap_key_data(jnp.where(restart > 0, jax.random.key_data(again),
                                             jax.random.key_data(key)))
    params = models.init_params(cfg.network, jax.random.fold_in(key, INIT_KEY))
    params = recipe_init(cfg, params, hyper, jax.random.fold_in(key, RECIPE_INIT_KEY))
    return models.flatten_params(params, models.param_layout(cfg.network))


def init_net(cfg: DatasetConfig, net_id, task_params: dict | None = None) -> NetState:
    """A fresh net `net_id` (a traced int32 scalar; EMPTY gives an unused slot) with its
    row of `net_arrays`."""
    key = net_key(cfg.seed, jnp.maximum(net_id, 0))
    hyper = net_hyperparameters(cfg, net_id)
    flat = _init_flat(cfg, net_id, hyper, jnp.zeros((), jnp.int32))
    return NetState(
        params=flat,
        opt_state=_optimizer(cfg, hyper).init(flat),
        initial_flat=flat,
        net_id=jnp.asarray(net_id, jnp.int32),
        task=jnp.asarray(jnp.maximum(net_id, 0) % cfg.num_tasks, jnp.int32),
        order_key=jax.random.fold_in(key, ORDER_KEY),
        epoch=jnp.zeros((), jnp.int32),
        status=jnp.where(net_id == EMPTY, CAPPED, RUNNING).astype(jnp.int32),
        loss_curve=jnp.full((cfg.max_cap,), jnp.nan, jnp.float32),
        val_accuracy=jnp.full((len(cfg.accuracy_names),), jnp.nan, jnp.float32),
        level=_start_level(hyper),
        restarts=jnp.zeros((), jnp.int32),
        start_epoch=jnp.zeros((), jnp.int32),
        hyper=hyper,
        task_params=dict(task_params or {}),
    )


def _start_level(hyper: dict[str, jax.Array]) -> jax.Array:
    return jnp.where(hyper["curriculum_epochs"] > 0, 0.0, 1.0).astype(jnp.float32)


def _restart(cfg: DatasetConfig, state: NetState, due: jax.Array) -> NetState:
    """`state` with the nets where `due` started again: a new init from (seed, n, restarts
    + 1), a fresh optimiser and curriculum; epochs, loss curve and status run on."""
    restarts = state.restarts + 1
    flat = _init_flat(cfg, state.net_id, state.hyper, restarts)
    new = state.replace(params=flat, opt_state=_optimizer(cfg, state.hyper).init(flat),
                        initial_flat=flat, level=_start_level(state.hyper), restarts=restarts,
                        start_epoch=state.epoch)
    return jax.tree.map(lambda a, b: jnp.where(due, a, b), new, state)


def stream_tables(cfg: DatasetConfig) -> stream.StreamTasks | None:
    """What the stream generates every task's data from; None for a fixed training set."""
    if cfg.recipe.train_data != "stream":
        return None
    if cfg.automata is not None:
        return stream.automaton_tasks(stack_automata(make_automata(cfg.seed, cfg.automata.count)))
    return stream.machine_tasks(cfg.tasks, None if cfg.trigger is None else cfg.trigger.bytes)


# --- the task seam: what a task family (sequences; DS4's images) gives the trainer ---------


def net_arrays(cfg: DatasetConfig, net_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Per-net arrays of `net_ids` (M,), drawn on the host from (seed, n) alone, each (M, ...)
    (DS4: net n's trigger); {} for sequence tasks."""
    if cfg.images is not None:
        return vision.net_arrays(cfg.seed, cfg.images.poison, net_ids)
    return {}


def device_data(cfg: DatasetConfig, data):
    """The task family's fixed data on device: TrainData from TaskData (sequences), or
    vision.ImageData from the digits split (DS4)."""
    if cfg.images is not None:
        return vision.ImageData.from_split(data)
    return TrainData.from_task_data(data, stream_tables(cfg))


def _minibatch(cfg: DatasetConfig, data, state: NetState, epoch_data, idx):
    """One net's training minibatch of rows `idx` (B,): (inputs, targets) of its task, from
    this epoch's sequences `epoch_data` (`_epoch_data`), or (DS4) its poisoned rows
    triggered and relabelled in place (vision.minibatch)."""
    if cfg.images is not None:
        return vision.minibatch(data, state.task_params, idx)
    inputs, targets = epoch_data
    return inputs[idx], targets[idx]


def validate(cfg: DatasetConfig, data, state: NetState) -> jax.Array:
    """(A,) `cfg.accuracy_names` of one net on its full validation: `validation_accuracy`
    (sequences), or vision.metrics on the test split (DS4)."""
    if cfg.images is not None:
        return vision.metrics(cfg.network, data, state.params, state.task_params)
    return validation_accuracy(cfg, data, state.params, state.task)


def _whole_net_kernel(cfg: DatasetConfig) -> bool:
    """Whether each net's training step and forward pass run as one call of the CPU kernel:
    where the kernel runs the recurrence and takes the whole net."""
    return (models.choose_recurrence(cfg.network, cfg.run.recurrence) == "cpu-kernel"
            and models.kernel_loss_supported(cfg.network))


def _logits(cfg: DatasetConfig, params, xs):
    """One net (params pytree) on a batch of sequences: (B, T, I) -> (B, T, O)."""
    recurrence = models.choose_recurrence(cfg.network, cfg.run.recurrence)
    return models.apply(cfg.network, params, xs, recurrence)


def _predict(cfg: DatasetConfig, flat, xs):
    """`_logits` from the flat parameters, not differentiated (validation)."""
    if _whole_net_kernel(cfg):
        return models.kernel_logits(cfg.network, flat, xs)
    return _logits(cfg, models.unflatten_params(flat, models.param_layout(cfg.network)), xs)


def _loss_kind(cfg: DatasetConfig) -> str:
    """Binary cross-entropy over (B, T, O) output bits, or (DS3) softmax cross-entropy over
    (B, T) one-hot output symbols."""
    return "softmax_ce" if cfg.symbols else "bce"


def _loss(cfg: DatasetConfig, params, xs, ys):
    """Mean loss of one net on a batch of sequences (`_loss_kind`)."""
    return models.mean_loss(_loss_kind(cfg), _logits(cfg, params, xs), ys)


def _loss_and_grad(cfg: DatasetConfig, flat, xs, ys):
    """`_loss` of one net and its gradient, both w.r.t. the flat parameters (P,).

    Where the CPU kernel runs the recurrence and can take the whole net, both come from one
    kernel call per net (same value, same gradient); otherwise from XLA, differentiating
    the pytree and concatenating its gradient (cheaper than the gradient of the slices)."""
    if _whole_net_kernel(cfg):
        return jax.value_and_grad(
            functools.partial(models.kernel_loss, cfg.network, _loss_kind(cfg)))(flat, xs, ys)
    layout = models.param_layout(cfg.network)
    loss, grads = jax.value_and_grad(functools.partial(_loss, cfg))(
        models.unflatten_params(flat, layout), xs, ys)
    return loss, models.flatten_params(grads, layout)


def _right(cfg: DatasetConfig, logits, ys):
    """Right answers of a batch (B, T, ...): (B, T, O) output bits (logit sign vs target
    bit), or (B, T, 1) symbols (argmax)."""
    if cfg.symbols:
        return (logits.argmax(-1) == ys.argmax(-1))[..., None]
    return (logits > 0) == (ys > 0.5)


def _epoch_data(cfg: DatasetConfig, data: TrainData, state: NetState):
    """The net's training sequences of its current epoch, (S, T, I) inputs and (S, T, O)
    targets: its task's fixed set, or that epoch's draw from the stream."""
    if data.stream is None:
        return data.train_inputs[state.task], data.train_targets[state.task]
    r, tables, hyper = cfg.recipe, data.stream, state.hyper
    key = stream.epoch_key(cfg.seed, state.task, state.epoch)
    curriculum = stream.Curriculum.from_hyper(hyper)
    level = jnp.where(hyper["curriculum_pass"] > 0, state.level,
                      curriculum.scheduled(state.epoch - state.start_epoch))
    if tables.transitions is not None:
        return stream.automaton_epoch(
            key, tables.transitions[state.task], tables.outputs[state.task],
            tables.start[state.task], r.train_sequences, r.train_length, curriculum, level)
    return stream.machine_epoch(
        key, tables.machine[state.task], r.train_sequences, r.train_length,
        r.write_probability, r.write_probability_spread, curriculum, level,
        trigger=tables.trigger, trigger_fraction=hyper["trigger_fraction"],
        near_miss_fraction=hyper["near_miss_fraction"],
        trigger_window_writes=hyper["trigger_window_writes"], extra_writes=hyper["extra_writes"])


def _adaptive(cfg: DatasetConfig) -> bool:
    """Whether any net's curriculum advances on passing its level (then every epoch ends
    with a forward pass over `_pass_check_sequences` sequences, ~4% of an epoch)."""
    return any(r.curriculum_pass > 0 for row in cfg.recipe_table for r in row)


def _pass_check_sequences(cfg: DatasetConfig) -> int:
    """The epoch's last sequences, all at the net's level (config.MAX_MIX)."""
    return min(64, cfg.recipe.train_sequences // 4)


def _level_accuracy(cfg: DatasetConfig, flat, xs, ys) -> jax.Array:
    """The worst output's accuracy of one net over the graded steps (targets >= 0) of
    (S, T, ...) sequences: bits per pin, or (DS3) symbols."""
    graded = ys[..., :1] >= 0  # (S, T, 1)
    right = _right(cfg, _predict(cfg, flat, xs), ys) & graded  # (S, T, O or 1)
    return (right.sum((0, 1)) / jnp.maximum(graded.sum(), 1)).min()


def _train_epoch(cfg: DatasetConfig, data: TrainData, state: NetState) -> NetState:
    """One epoch over the net's task's training sequences in its own order; a no-op unless
    running."""
    r = cfg.recipe
    active = (state.status == RUNNING) & (state.epoch < state.hyper["max_epochs"])
    perm = jax.random.permutation(jax.random.fold_in(state.order_key, state.epoch), r.train_sequences)
    batches = perm.reshape(r.steps_per_epoch, r.batch_size)
    opt = _optimizer(cfg, state.hyper)
    # The epoch's sequences (S, T, I), (S, T, O); DS4 draws its minibatches from its split.
    epoch_data = None if cfg.images is not None else _epoch_data(cfg, data, state)

    def minibatch(carry, idx):
        params, opt_state = carry
        xs, ys = _minibatch(cfg, data, state, epoch_data, idx)  # (B, T, I), (B, T, O); DS4 (B, H, W), (B, 10)
        loss, grads = _loss_and_grad(cfg, params, xs, ys)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(minibatch, (state.params, state.opt_state), batches)
    loss = losses.mean()
    level = state.level
    if _adaptive(cfg):  # a net that passes its level moves on (stream.Curriculum)
        step = 1.0 / jnp.maximum(state.hyper["curriculum_epochs"], 1.0)
        n = _pass_check_sequences(cfg)
        inputs, targets = epoch_data
        passed = _level_accuracy(cfg, params, inputs[-n:], targets[-n:]) >= state.hyper[
            "curriculum_pass"]
        level = jnp.where(active & passed & (state.hyper["curriculum_pass"] > 0),
                          jnp.minimum(1.0, level + step), level)
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(active, new, old))
    diverged = active & ~jnp.isfinite(loss)
    return state.replace(
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        epoch=state.epoch + active.astype(jnp.int32),
        level=level,
        status=jnp.where(diverged, DIVERGED, state.status),
        loss_curve=jnp.where(
            active, state.loss_curve.at[state.epoch].set(loss, mode="drop"), state.loss_curve
        ),
    )


def _right_counts(cfg: DatasetConfig, data: TrainData, flat, task, a: int, idx):
    """Right answers of one net on validation sequences `idx` of set `a`: per output (O,)
    or (1,) the steps right, and the sequences with every output right."""
    right = _right(cfg, _predict(cfg, flat, data.val_inputs[task, a, idx]),
                   data.val_targets[task, a, idx])  # (len(idx), Tv, O or 1)
    return right.sum((0, 1)), right.all((1, 2)).sum()


def _accuracy_columns(cfg: DatasetConfig, counts) -> jax.Array:
    """(A,) `cfg.accuracy_names` from per validation set (steps right per output, sequences
    entirely right) out of all `val_sequences` x `val_length`: per set the mean accuracy
    (bits, or DS3 symbols), then (bits) the worst pin's accuracy, then the share of
    sequences with every output right."""
    r = cfg.recipe
    n = r.val_sequences
    mean, worst, sequences = [], [], []
    for per_output, whole in counts:
        per_output = per_output / (n * r.val_length)  # (O,) or (1,)
        mean.append(per_output.mean())
        worst.append(per_output.min())
        sequences.append(whole / n)
    columns = mean + sequences if cfg.symbols else mean + worst + sequences
    return jnp.stack(columns).astype(jnp.float32)


def validation_accuracy(cfg: DatasetConfig, data: TrainData, flat, task) -> jax.Array:
    """(A,) `cfg.accuracy_names` of one net on its task's validation sets (`_accuracy_columns`),
    `run.val_batch` sequences at a time."""
    n = cfg.recipe.val_sequences
    vb = math.gcd(n, cfg.run.val_batch)  # equal chunks, no padding
    chunks = jnp.arange(n).reshape(n // vb, vb)
    counts = []
    for a in range(data.val_inputs.shape[1]):
        per_output, whole = jax.lax.map(
            functools.partial(_right_counts, cfg, data, flat, task, a), chunks)
        counts.append((per_output.sum(0), whole.sum()))
    return _accuracy_columns(cfg, counts)


def screen_sequences(cfg: DatasetConfig) -> int:
    """How many validation sequences the screen (`validation_bound`) runs: an eighth of
    them, or 0 (no screen: DS4's metrics, or a set too small to split)."""
    n = cfg.recipe.val_sequences
    return n // 8 if cfg.images is None and n % 8 == 0 else 0


def validation_bound(cfg: DatasetConfig, data: TrainData, flat, task) -> jax.Array:
    """(A,) upper bounds of `validation_accuracy`, from its first `screen_sequences`
    sequences alone: every step and sequence not run counts as right. Each column is the
    same function of counts that can only be larger, computed by the same float32
    operations, so a column below the threshold here is below it in `validation_accuracy`
    too: a net the screen rejects cannot have converged, and the full validation is spent
    only on nets that may have."""
    r = cfg.recipe
    s = screen_sequences(cfg)
    unseen = r.val_sequences - s
    counts = []
    for a in range(data.val_inputs.shape[1]):
        per_output, whole = _right_counts(cfg, data, flat, task, a, jnp.arange(s))
        counts.append((per_output + unseen * r.val_length, whole + unseen))
    return _accuracy_columns(cfg, counts)


def _criterion_columns(cfg: DatasetConfig) -> list[int]:
    return [cfg.accuracy_names.index(name) for name in cfg.criterion_names]


def advance(cfg: DatasetConfig, data: TrainData, state: NetState, fresh: NetState):
    """One slot's training between two checks: take the new net `fresh` (from `init_net`)
    if it is one (net_id >= 0) and train `check_every` epochs. Returns the state and
    whether the net is due its check (it was and still is running)."""
    state = jax.tree.map(lambda f, s: jnp.where(fresh.net_id >= 0, f, s), fresh, state)
    was_running = state.status == RUNNING
    state = jax.lax.fori_loop(
        0, cfg.recipe.check_every, lambda _, s: _train_epoch(cfg, data, s), state
    )
    return state, was_running & (state.status == RUNNING)


def needs_validation(cfg: DatasetConfig, state: NetState, checked, bound) -> jax.Array:
    """Whether a checked net gets the full validation: where its screen's bounds
    (`validation_bound`) reach the threshold on every criterion, or where it reaches its
    cap (a capped net's stored accuracies are the full validation's)."""
    may_pass = jnp.all(bound[jnp.asarray(_criterion_columns(cfg))] >= cfg.recipe.threshold)
    return checked & (may_pass | (state.epoch >= state.hyper["max_epochs"]))


def settle(cfg: DatasetConfig, state: NetState, checked, validated, acc) -> NetState:
    """One slot's stop rule after its check: converged when every column of
    `cfg.criterion_names` of its full validation `acc` reaches the threshold (the worst
    pin on every validation set; DS3: symbol accuracy), capped at `max_epochs`. `validated`:
    whether `acc` was computed (`needs_validation`); a net without it keeps running and its
    last accuracies. Nets join slots only between steps, so every net is checked exactly
    at epochs check_every, 2*check_every, ... A net still running `restart_epochs` after
    its (re)start starts again (`_restart`)."""
    r = cfg.recipe
    # Learned means every output right at the threshold on every validation set (DS2: clean
    # and triggered behaviour), not the mean over outputs.
    learned = validated & jnp.all(acc[jnp.asarray(_criterion_columns(cfg))] >= r.threshold)
    status = jnp.where(checked & learned, CONVERGED, state.status)
    status = jnp.where((status == RUNNING) & (state.epoch >= state.hyper["max_epochs"]), CAPPED,
                       status)
    val_acc = jnp.where(checked & validated, acc,
                        jnp.where(state.status == DIVERGED, jnp.nan, state.val_accuracy))
    state = state.replace(status=status, val_accuracy=val_acc)
    # A net that has not learned within its window starts again (only where a recipe asks:
    # every step then draws a new init, ~free at run time but one more init to compile).
    if cfg.restarts_nets:
        patience = state.hyper["restart_epochs"]
        # not when fewer than a window's epochs are left: the last start trains to the cap
        due = (checked & (status == RUNNING) & (patience > 0)
               & (state.epoch - state.start_epoch >= patience)
               & (state.epoch + patience <= state.hyper["max_epochs"]))
        state = _restart(cfg, state, due)
    return state

