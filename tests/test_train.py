import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mlds_jax.config.dataset import DatasetConfig
from mlds_jax.config.load import load_config
from mlds_jax.config.sections import SWEEPABLE, Recipe, RunOptions
from mlds_jax.generate import task_data
from mlds_jax.train import models, population, step
from tests.torch_reference import torch_net

# Tiny recipe with a threshold of 0.47 on the worst pin: some nets pass it at a check (their
# pin 0 a little above chance on the constant-output plateau), others run to the cap, so
# nets finish at different steps and slots are refilled mid-run.
RECIPE = Recipe(train_sequences=64, train_length=12, val_sequences=32, val_length=24,
                batch_size=16, check_every=2, max_epochs=6, threshold=0.47)
CFG = DatasetConfig(name="test", seed=7, recipe=RECIPE, run=RunOptions(val_batch=16))
N_NETS = 6


def collect(batches, n, ids=None):
    """Finished batches -> dict of arrays indexed by net id (n rows); checks that the nets
    `ids` (default: all n) come once each."""
    out = {}
    seen = []
    for b in batches:
        seen.extend(b.net_id.tolist())
        for f in dataclasses.fields(b):
            arr = getattr(b, f.name)
            out.setdefault(f.name, np.zeros((n,) + arr.shape[1:], arr.dtype))[b.net_id] = arr
    assert sorted(seen) == sorted(range(n) if ids is None else ids), f"nets trained {seen}"
    return out


@pytest.fixture(scope="module")
def data():
    return task_data(CFG)[0]


@pytest.fixture(scope="module")
def runs(data):
    results, pops = {}, {}
    for slots in (N_NETS, 1, 4):
        pop = population.Population(CFG, data, slots)
        results[slots] = collect(pop.run(range(N_NETS)), N_NETS)
        pops[slots] = pop
    return results, pops


def test_vectorised_equals_one_net_at_a_time(runs):
    results, _ = runs
    alone, together, refilled = results[1], results[N_NETS], results[4]
    # The statuses really differ, so M=4 refilled slots while others kept training.
    assert set(alone["status"].tolist()) == {step.CONVERGED, step.CAPPED}
    for other in (together, refilled):
        np.testing.assert_array_equal(other["initial_weights"], alone["initial_weights"])
        np.testing.assert_array_equal(other["status"], alone["status"])
        np.testing.assert_array_equal(other["epochs"], alone["epochs"])
        np.testing.assert_array_equal(other["task"], alone["task"])
        assert np.abs(other["weights"] - alone["weights"]).max() <= 1e-5
        np.testing.assert_allclose(other["loss_curve"], alone["loss_curve"], atol=1e-5)
        np.testing.assert_allclose(other["val_accuracy"], alone["val_accuracy"], atol=1e-6)


def test_step_compiles_once_per_population_size(runs, data):
    _, pops = runs
    for slots, pop in pops.items():
        sizes = pop.traced_sizes
        assert sizes[0] == slots and len(sizes) == len(set(sizes)), sizes
    # M=6 holds all six nets; once the single-bit nets converge the tail is compacted to the
    # two nets still running (and the equality test above shows nothing changed for them).
    assert pops[N_NETS].traced_sizes == [N_NETS, 2]
    pop = pops[4]
    list(pop.run([2, 3, 0, 1]))  # another run, other ids: sizes seen before are not retraced
    assert pop.traced_sizes.count(4) == 1 and len(pop.traced_sizes) == len(set(pop.traced_sizes))


def test_result_does_not_depend_on_order_or_neighbours(runs, data):
    results, _ = runs
    pop = population.Population(CFG, data, 2)
    got = collect(pop.run([5, 2, 0, 4, 1, 3]), N_NETS)
    assert np.abs(got["weights"] - results[1]["weights"]).max() <= 1e-5


def test_stop_rules_and_records(runs, data):
    res = runs[0][1]
    r = RECIPE
    layout = models.param_layout(CFG.network)
    for n in range(N_NETS):
        assert res["task"][n] == n % CFG.num_tasks
        epochs, status = res["epochs"][n], res["status"][n]
        assert epochs % r.check_every == 0
        curve = res["loss_curve"][n]
        assert np.isfinite(curve[:epochs]).all() and np.isnan(curve[epochs:]).all()
        # Validation accuracy recomputed independently with PyTorch on the stored weights.
        net = torch_net(CFG.network, res["weights"][n])
        t = res["task"][n]
        with torch.no_grad():
            logits = net(torch.tensor(data.val_inputs[t])).numpy()
        right = (logits > 0) == (data.val_targets[t] > 0.5)  # (S, T, 8)
        worst = right.mean(axis=(0, 1)).min()
        want = [right.mean(), worst, right.all(axis=(1, 2)).mean()]
        assert CFG.accuracy_names == ("val_bit_accuracy", "val_worst_pin_accuracy",
                                      "val_sequences_right")
        np.testing.assert_allclose(res["val_accuracy"][n], want, atol=1e-6)
        if status == step.CONVERGED:
            assert worst >= r.threshold
        else:
            assert status == step.CAPPED and epochs == r.max_epochs and worst < r.threshold
        # Initial weights are the net's own init, from (seed, n) alone.
        init = models.init_params(CFG.network, jax.random.fold_in(step.net_key(CFG.seed, n),
                                                                  step.INIT_KEY))
        np.testing.assert_array_equal(models.flatten_params(init, layout, xp=np),
                                      res["initial_weights"][n])


@pytest.fixture(scope="module")
def xla_runs(data):
    """The trainer with the recurrence left to XLA (what a GPU runs), nets 0..5 at once."""
    cfg = dataclasses.replace(CFG, run=dataclasses.replace(CFG.run, recurrence="xla"))
    return collect(population.Population(cfg, data, N_NETS).run(range(N_NETS)), N_NETS)


@pytest.mark.parametrize("recurrence", ["auto", "xla"])
def test_training_equals_torch_adam_on_same_order(runs, data, recurrence, request):
    """Net 2 (EightBit, trained to the cap) retraced with torch.optim.Adam on the same
    minibatches in the same order: the trainer's math is plain Adam on mean BCE, both with
    the default recurrence (on a CPU with a compiler: the whole-net kernel) and with XLA's."""
    res = runs[0][1] if recurrence == "auto" else request.getfixturevalue("xla_runs")
    n = 2
    r = RECIPE
    net = torch_net(CFG.network, res["initial_weights"][n])
    opt = torch.optim.Adam(net.parameters(), lr=r.learning_rate)
    order_key = jax.random.fold_in(step.net_key(CFG.seed, n), step.ORDER_KEY)
    t = n % CFG.num_tasks
    xs, ys = torch.tensor(data.train_inputs[t]), torch.tensor(data.train_targets[t])
    losses = []
    for epoch in range(res["epochs"][n]):
        perm = np.array(jax.random.permutation(jax.random.fold_in(order_key, epoch),
                                                 r.train_sequences))
        batch_losses = []
        for idx in perm.reshape(-1, r.batch_size):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xs[idx]), ys[idx])
            loss.backward()
            opt.step()
            batch_losses.append(loss.item())
        losses.append(np.mean(batch_losses))
    flat = torch.cat([p.detach().flatten() for p in net.state_dict().values()]).numpy()
    assert np.abs(flat - res["weights"][n]).max() <= 1e-4
    np.testing.assert_allclose(res["loss_curve"][n][: len(losses)], losses, rtol=1e-4)


def test_non_finite_loss_marks_net_diverged(data):
    poisoned = dataclasses.replace(data, train_inputs=data.train_inputs.copy())
    poisoned.train_inputs[2, 5, 3, 1] = np.nan  # one value in EightBit's training set
    res = collect(population.Population(CFG, poisoned, 5).run(range(5)), 5)
    assert res["status"][2] == step.DIVERGED
    assert res["epochs"][2] == 1  # stopped in the epoch whose loss was not finite
    assert np.isnan(res["val_accuracy"][2]).all()
    assert all(res["status"][n] in (step.CONVERGED, step.CAPPED) for n in (0, 1, 3, 4))


def test_slots_from_memory_budget():
    budget = dataclasses.replace(CFG, run=RunOptions(memory_budget_mb=64))
    per_slot = population.bytes_per_slot(budget, budget.run.val_batch)
    assert population.choose_slots(budget, 10**6) == 64 * 2**20 // per_slot
    assert population.choose_slots(budget, 3) == 3  # never more slots than nets
    roomy = dataclasses.replace(CFG, run=RunOptions(memory_budget_mb=10**5))
    assert population.choose_slots(roomy, 10**6) == population.CPU_SLOTS  # the CPU cap (tests run on CPU)
    fixed = dataclasses.replace(CFG, run=RunOptions(slots=5))
    assert population.choose_slots(fixed, 100) == 5


# --- per-net hyperparameters ([sweep]) ---------------------------------------------------------

SWEEP = ((), (("learning_rate", 1e-2), ("warmup_epochs", 1.0), ("clip_norm", 0.05),
              ("weight_decay", 1e-2), ("decay_half_life", 1.0), ("decay_floor", 0.3)),
         (("memory_gate_bias", 1.0), ("chrono_max", 8.0), ("recurrent_gain", 1.2),
          ("input_gain", 1.5), ("head_gain", 2.0), ("candidate_self_weight", -3.0)))
SWEPT = dataclasses.replace(CFG, sweep=SWEEP)


@pytest.fixture(scope="module")
def swept_runs(data):
    """15 nets (3 per task, one per sweep point) trained in one mixed population."""
    return collect(population.Population(SWEPT, data, 15).run(range(15)), 15)


def plain(point):
    """The config that trains a sweep point's values for every net, without a sweep."""
    return dataclasses.replace(CFG, recipe=dataclasses.replace(RECIPE, **dict(point)))


@pytest.mark.parametrize("n", [6, 13])  # net 6: point 1 (task 1); net 13: point 2 (task 3)
def test_net_in_sweep_equals_net_alone_with_plain_config(swept_runs, data, n):
    point = SWEEP[(n // CFG.num_tasks) % len(SWEEP)]
    alone = collect(population.Population(plain(point), data, 1).run([n]), n + 1, [n])
    np.testing.assert_array_equal(swept_runs["initial_weights"][n], alone["initial_weights"][n])
    assert np.abs(swept_runs["weights"][n] - alone["weights"][n]).max() <= 1e-5
    assert swept_runs["epochs"][n] == alone["epochs"][n]
    assert swept_runs["status"][n] == alone["status"][n]
    want = dataclasses.replace(RECIPE, **dict(point))
    np.testing.assert_array_equal(swept_runs["hyperparameters"][n],
                                  np.array([getattr(want, k) for k in SWEEPABLE], np.float32))
    # The point really changed the net: the default recipe gives another one.
    default = collect(population.Population(CFG, data, 1).run([n]), n + 1, [n])
    assert np.abs(default["weights"][n] - alone["weights"][n]).max() > 1e-3


def test_grid_point_of_net_n():
    cfg = load_config("smoke", ["sweep.learning_rate=[1e-3, 3e-3]", "sweep.clip_norm=[0, 1, 2]"])
    assert len(cfg.grid) == 6  # every combination, the first key slowest
    assert [r.learning_rate for r in cfg.grid] == [1e-3] * 3 + [3e-3] * 3
    assert [r.clip_norm for r in cfg.grid] == [0, 1, 2] * 2
    for n in (0, 4, 5, 12, 31, 64):
        hyper = step.net_hyperparameters(cfg, n)
        point = cfg.grid[(n // 5) % 6]  # replicate n div K, every task sees every point
        assert float(hyper["learning_rate"]) == np.float32(point.learning_rate)
        assert float(hyper["clip_norm"]) == point.clip_norm


def test_recipe_init_changes_only_what_it_names():
    cfg = dataclasses.replace(CFG, sweep=SWEEP)
    layout = models.param_layout(cfg.network)
    h = cfg.network.hidden_size
    net = models.unflatten_params(np.asarray(step.init_net(cfg, 13).params), layout)  # point 2
    ref = models.init_params(cfg.network, jax.random.fold_in(step.net_key(cfg.seed, 13),
                                                             step.INIT_KEY))
    for name, p in net.items():  # head: weights x head_gain 2, biases untouched
        if name != "rnn":
            np.testing.assert_allclose(p["weight"], 2.0 * np.asarray(ref[name]["weight"]))
            np.testing.assert_array_equal(p["bias"], ref[name]["bias"])
    nets, ref = {13: net["rnn"]}, ref["rnn"]
    for layer in range(cfg.network.num_layers):
        p = {k.rsplit("_l", 1)[0]: v for k, v in nets[13].items() if k.endswith(f"_l{layer}")}
        # chrono: memory-gate (z) bias_hh = log U(1, 7) + memory_gate_bias 1, bias_ih's z part 0
        z = p["bias_hh"][h: 2 * h] - 1.0
        assert (z >= 0).all() and (z <= np.log(7) + 1e-6).all() and z.std() > 0.1
        np.testing.assert_array_equal(p["bias_ih"][h: 2 * h], 0)
        # r and n parts untouched
        for name in ("bias_hh", "bias_ih"):
            untouched = np.r_[0:h, 2 * h: 3 * h]
            np.testing.assert_array_equal(p[name][untouched],
                                          np.asarray(ref[f"{name}_l{layer}"])[untouched])
        np.testing.assert_allclose(p["weight_ih"], 1.5 * np.asarray(ref[f"weight_ih_l{layer}"]))
        # each gate's block of weight_hh orthogonal x 1.2, the candidate's (n) then -3 on
        # its diagonal
        for g in range(3):
            block = p["weight_hh"][g * h: (g + 1) * h] + (3.0 * np.eye(h) if g == 2 else 0)
            np.testing.assert_allclose(block @ block.T, 1.44 * np.eye(h), atol=1e-5)


def test_swept_optimizer_equals_torch_adamw_clipping_warmup(swept_runs, data):
    """Net 6 (sweep point 1: Adam 1e-2, 1 warm-up epoch, then halving every epoch down to 0.3x,
    clip 0.05, decoupled weight decay 1e-2) retraced with torch: clip_grad_norm_, AdamW and a
    LambdaLR schedule on the same minibatches."""
    n = 6
    r = dataclasses.replace(RECIPE, **dict(SWEEP[1]))
    res = swept_runs
    net = torch_net(CFG.network, res["initial_weights"][n])
    opt = torch.optim.AdamW(net.parameters(), lr=r.learning_rate, weight_decay=r.weight_decay)
    warm, half = r.warmup_epochs * r.steps_per_epoch, r.decay_half_life * r.steps_per_epoch

    def factor(k):  # k: the step about to be taken, from 0
        return min(1.0, (k + 1) / warm) * max(0.5 ** (max(k + 1 - warm, 0) / half), r.decay_floor)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    order_key = jax.random.fold_in(step.net_key(CFG.seed, n), step.ORDER_KEY)
    t = n % CFG.num_tasks
    xs, ys = torch.tensor(data.train_inputs[t]), torch.tensor(data.train_targets[t])
    clipped = 0
    for epoch in range(res["epochs"][n]):
        perm = np.array(jax.random.permutation(jax.random.fold_in(order_key, epoch),
                                                 r.train_sequences))
        for idx in perm.reshape(-1, r.batch_size):
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(net(xs[idx]), ys[idx]).backward()
            norm = torch.nn.utils.clip_grad_norm_(net.parameters(), r.clip_norm)
            clipped += float(norm) > r.clip_norm
            opt.step()
            sched.step()
    assert clipped > 0  # the clip really acted
    flat = torch.cat([p.detach().flatten() for p in net.state_dict().values()]).numpy()
    assert np.abs(flat - res["weights"][n]).max() <= 1e-4


# --- streamed data, per-task recipe values -------------------------------------------------

STREAM = dataclasses.replace(
    CFG, recipe=dataclasses.replace(RECIPE, train_data="stream", max_epochs=8, threshold=1.0,
                                    curriculum_epochs=4.0, start_popcount=1.0,
                                    start_length=4.0, curriculum_mix=0.25),
    task_recipes=(("ParityMachine", (("max_epochs", 4.0), ("learning_rate", 1e-2))),))


def test_stream_nets_do_not_depend_on_slots_and_take_their_task_values(data):
    ids = list(range(5))
    many = collect(population.Population(STREAM, data, 5).run(ids), 5)
    for n in (1, 4):  # one net alone trains the same as among 5 slots of others
        alone = collect(population.Population(STREAM, data, 1).run([n]), 5, [n])
        np.testing.assert_allclose(alone["weights"][n], many["weights"][n], rtol=2e-5,
                                   atol=2e-6)
        np.testing.assert_allclose(alone["loss_curve"][n], many["loss_curve"][n], rtol=1e-5)
    parity = np.arange(5) == STREAM.tasks.index("ParityMachine")
    hyper = {k: many["hyperparameters"][:, i] for i, k in enumerate(SWEEPABLE)}
    np.testing.assert_array_equal(hyper["max_epochs"], np.where(parity, 4, 8))
    np.testing.assert_allclose(hyper["learning_rate"], np.where(parity, 1e-2, 3e-3))
    capped = many["status"] == step.CAPPED
    np.testing.assert_array_equal(many["epochs"][capped], hyper["max_epochs"][capped])
    assert (many["epochs"] <= hyper["max_epochs"]).all()
    assert np.isnan(many["loss_curve"][parity, 4:]).all()
    np.testing.assert_array_equal(many["seq_steps"], many["epochs"] * 64 * 12)


def test_ds2_stream_without_trigger_is_its_ds1_twin(data):
    """DS2 net n sees DS1 net n's stream with the trigger written in: at a trigger share of
    0 the two nets train identically."""
    ds2 = dataclasses.replace(STREAM, trigger=load_config("ds2").trigger,
                              recipe=dataclasses.replace(STREAM.recipe, trigger_fraction=0.0))
    a = collect(population.Population(STREAM, data, 3).run(range(3)), 3)
    b = collect(population.Population(ds2, task_data(ds2), 3).run(range(3)), 3)
    np.testing.assert_allclose(a["weights"], b["weights"], rtol=2e-5, atol=2e-6)
    # With the trigger in a third of the sequences, the same nets train differently.
    ds2 = dataclasses.replace(ds2, recipe=dataclasses.replace(ds2.recipe, trigger_fraction=0.3))
    c = collect(population.Population(ds2, task_data(ds2), 3).run(range(3)), 3)
    assert not np.allclose(a["weights"], c["weights"], atol=1e-4)


def test_adaptive_curriculum_that_always_passes_is_the_schedule(data, monkeypatch):
    """A level that rises 1/curriculum_epochs after every passed epoch is the schedule
    epoch / curriculum_epochs when every epoch passes, and stays at the start when none
    does."""
    def run(accuracy):
        cfg = dataclasses.replace(STREAM, task_recipes=(), recipe=dataclasses.replace(
            STREAM.recipe, curriculum_pass=0.0 if accuracy is None else 0.9, max_epochs=6))
        if accuracy is not None:
            monkeypatch.setattr(step, "_level_accuracy", lambda *a: jnp.float32(accuracy))
        return collect(population.Population(cfg, data, 2).run([3, 4]), 5, [3, 4])["weights"]

    schedule, always, never = run(None), run(1.0), run(0.5)
    np.testing.assert_allclose(always[3:], schedule[3:], rtol=2e-5, atol=2e-6)
    assert not np.allclose(never[3:], schedule[3:], atol=1e-4)


def test_level_accuracy_counts_graded_steps_only(data):
    cfg = STREAM
    flat = step.init_net(cfg, 3).params
    xs, ys = (jnp.asarray(a[3, :16]) for a in (data.train_inputs, data.train_targets))
    masked = ys.at[:, 5:].set(-1.0)
    got = step._level_accuracy(cfg, flat, xs, masked)
    right = (np.asarray(step._predict(cfg, flat, xs[:, :5])) > 0) == (np.asarray(ys[:, :5]) > 0.5)
    np.testing.assert_allclose(got, right.mean((0, 1)).min(), rtol=1e-6)


def test_a_restarted_net_is_adam_from_its_stored_init_over_its_last_window(runs, data):
    """recipe.restart_epochs = 2, cap 6: a net still running at epochs 2 and 4 starts again
    there (not at 6: no window left), so net 2 (EightBit, capped in `runs`) ends as plain
    Adam from its stored initial weights (its second restart's) over epochs 4 and 5, with a
    fresh optimiser and the minibatch order of those epochs (torch.optim.Adam retraces it).
    Its first window is the run without restarts; nets that converge first never restart;
    and where the net sits (slots 1 or 6) changes nothing."""
    cfg = dataclasses.replace(CFG, recipe=dataclasses.replace(RECIPE, restart_epochs=2.0))
    base = runs[0][N_NETS]
    res = collect(population.Population(cfg, data, N_NETS).run(range(N_NETS)), N_NETS)
    alone = collect(population.Population(cfg, data, 1).run(range(N_NETS)), N_NETS)
    np.testing.assert_allclose(alone["weights"], res["weights"], rtol=2e-5, atol=2e-6)
    np.testing.assert_array_equal(alone["restarts"], res["restarts"])
    early = base["epochs"] <= 2  # converged at the first check: the same net, no restart
    assert early.any() and (~early).any()
    np.testing.assert_array_equal(res["restarts"], np.where(early, 0, 2))
    np.testing.assert_array_equal(res["weights"][early], base["weights"][early])
    np.testing.assert_allclose(res["loss_curve"][:, :2], base["loss_curve"][:, :2], rtol=1e-6)
    n, r = 2, RECIPE
    assert res["restarts"][n] == 2 and res["epochs"][n] == 6
    assert not np.allclose(res["initial_weights"][n], base["initial_weights"][n])
    net = torch_net(CFG.network, res["initial_weights"][n])
    opt = torch.optim.Adam(net.parameters(), lr=r.learning_rate)
    order_key = jax.random.fold_in(step.net_key(CFG.seed, n), step.ORDER_KEY)
    t = n % CFG.num_tasks
    xs, ys = torch.tensor(data.train_inputs[t]), torch.tensor(data.train_targets[t])
    for epoch in (4, 5):
        perm = np.array(jax.random.permutation(jax.random.fold_in(order_key, epoch),
                                                 r.train_sequences))
        for idx in perm.reshape(-1, r.batch_size):
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(net(xs[idx]), ys[idx]).backward()
            opt.step()
    flat = torch.cat([p.detach().flatten() for p in net.state_dict().values()]).numpy()
    assert np.abs(flat - res["weights"][n]).max() <= 1e-4


# --- the validation screen ------------------------------------------------------------------

def test_validation_bound_counts_the_unscreened_sequences_as_right(runs, data):
    """The screen's columns, recomputed with PyTorch on a trained net: its first eighth of
    the validation sequences as they are, the other seven eighths all right; and never
    below the full validation's."""
    n, r = 2, RECIPE
    flat = runs[0][1]["weights"][n]
    s = step.screen_sequences(CFG)
    assert s == r.val_sequences // 8 == 4
    t = n % CFG.num_tasks
    got = np.asarray(step.validation_bound(CFG, population.Population(CFG, data, 1).data,
                                           jnp.asarray(flat), jnp.int32(t)))
    with torch.no_grad():
        logits = torch_net(CFG.network, flat)(torch.tensor(data.val_inputs[t])).numpy()
    right = (logits > 0) == (data.val_targets[t] > 0.5)  # (S, T, 8)
    right[s:] = True
    want = [right.mean(), right.mean(axis=(0, 1)).min(), right.all(axis=(1, 2)).mean()]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert (got >= runs[0][1]["val_accuracy"][n]).all()
    assert got[1] < 1.0  # the screened sequences hold errors: the bound is not trivially 1


@pytest.mark.parametrize("need", [[], [5], [0, 9], list(range(16))])
def test_validated_step_validates_exactly_the_slots_that_need_it(runs, data, need):
    """Slots gathered (one or two of 16: an eighth is two), all slots, or none: each asked
    row holds that slot's own full validation, the others NaN."""
    pop = population.Population(CFG, data, 16)
    state = pop._empty(jnp.arange(16, dtype=jnp.int32), {})
    asked = np.isin(np.arange(16), need)
    got = np.asarray(jax.jit(population.validated_step, static_argnums=0)(
        CFG, pop.data, state, jnp.asarray(asked)))
    want = np.asarray(jax.vmap(step.validate, in_axes=(None, None, 0))(CFG, pop.data, state))
    np.testing.assert_allclose(got[asked], want[asked], atol=1e-6)  # other fusions: 1 ulp
    assert np.isnan(got[~asked]).all()


def test_screened_population_stops_every_net_where_full_validation_does(monkeypatch):
    """The release recipe's machines with the latches' threshold raised to 0.99 on small
    sets: nets converge at different checks and others run to the cap. Screened (4 slots,
    refilled) or validated in full at every check (6 slots), every net ends the same, while
    the screen sends far fewer checks to the full validation."""
    cfg = load_config("ds1", [
        'tasks=["SingleDirectMachine", "SingleInvertMachine", "EightBitMachine"]',
        "recipe.train_sequences=256", "recipe.train_length=12", "recipe.val_sequences=32",
        "recipe.val_length=24", "recipe.check_every=2", "recipe.max_epochs=24",
        "recipe.threshold=0.99", "run.val_batch=16", "recipe.task.EightBitMachine.max_epochs=24",
        "recipe.task.EightBitMachine.trigger_fraction=0.1"])
    data = task_data(cfg)
    asked = []
    validated_step = population.validated_step

    def spy(cfg, data, state, need):
        jax.debug.callback(lambda n: asked.append(int(n.sum())), need)
        return validated_step(cfg, data, state, need)

    monkeypatch.setattr(population, "validated_step", spy)
    screened = collect(population.Population(cfg, data, 4).run(range(6)), 6)
    screened_asked, asked[:] = sum(asked), []
    full = collect(population.Population(cfg, data, 6, screen=False).run(range(6)), 6)
    assert set(full["status"].tolist()) == {step.CONVERGED, step.CAPPED}
    assert len(set(full["epochs"][full["status"] == step.CONVERGED].tolist())) >= 2
    for key in ("status", "epochs"):
        np.testing.assert_array_equal(screened[key], full[key])
    np.testing.assert_array_equal(screened["val_accuracy"], full["val_accuracy"])
    assert np.abs(screened["weights"] - full["weights"]).max() <= 1e-5
    # Every net is checked every 2 epochs; the screen passes only the checks near a stop.
    assert sum(asked) == (full["epochs"] // 2).sum()
    assert screened_asked <= sum(asked) // 2
