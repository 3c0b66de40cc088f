import dataclasses

import jax
import numpy as np
import pytest
import torch

from mlds_jax import models, train
from mlds_jax.config import DatasetConfig, Recipe, RunOptions
from mlds_jax.generate import task_data
from tests.torch_reference import torch_net

# Tiny recipe: single-bit machines pass the 0.9 threshold at their first check (their
# constant-output plateau already scores 0.94), EightBit and SimpleXOR run to the cap, so
# nets finish at different steps and slots are refilled mid-run.
RECIPE = Recipe(train_sequences=64, train_length=12, val_sequences=32, val_length=24,
                batch_size=16, check_every=2, max_epochs=6, threshold=0.9)
CFG = DatasetConfig(name="test", seed=7, recipe=RECIPE, run=RunOptions(val_batch=16))
N_NETS = 6


def collect(batches, n):
    """Finished batches -> dict of arrays indexed by net id; checks each net comes once."""
    out = {}
    seen = []
    for b in batches:
        seen.extend(b.net_id.tolist())
        for f in dataclasses.fields(b):
            arr = getattr(b, f.name)
            out.setdefault(f.name, np.zeros((n,) + arr.shape[1:], arr.dtype))[b.net_id] = arr
    assert sorted(seen) == list(range(n)), f"nets trained {seen}"
    return out


@pytest.fixture(scope="module")
def data():
    return task_data(CFG)[0]


@pytest.fixture(scope="module")
def runs(data):
    results, pops = {}, {}
    for slots in (N_NETS, 1, 4):
        pop = train.Population(CFG, data, slots)
        results[slots] = collect(pop.run(range(N_NETS)), N_NETS)
        pops[slots] = pop
    return results, pops


def test_vectorised_equals_one_net_at_a_time(runs):
    results, _ = runs
    alone, together, refilled = results[1], results[N_NETS], results[4]
    # The statuses really differ, so M=4 refilled slots while others kept training.
    assert set(alone["status"].tolist()) == {train.CONVERGED, train.CAPPED}
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
    pop = train.Population(CFG, data, 2)
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
        acc = ((logits > 0) == (data.val_targets[t] > 0.5)).mean()
        assert abs(acc - res["val_accuracy"][n, 0]) <= 1e-6
        if status == train.CONVERGED:
            assert acc >= r.threshold
        else:
            assert status == train.CAPPED and epochs == r.max_epochs and acc < r.threshold
        # Initial weights are the net's own init, from (seed, n) alone.
        init = models.init_params(CFG.network, jax.random.fold_in(train.net_key(CFG.seed, n),
                                                                  train.INIT_KEY))
        np.testing.assert_array_equal(models.flatten_params(init, layout, xp=np),
                                      res["initial_weights"][n])


@pytest.fixture(scope="module")
def xla_runs(data):
    """The trainer with the recurrence left to XLA (what a GPU runs), nets 0..5 at once."""
    cfg = dataclasses.replace(CFG, run=dataclasses.replace(CFG.run, recurrence="xla"))
    return collect(train.Population(cfg, data, N_NETS).run(range(N_NETS)), N_NETS)


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
    order_key = jax.random.fold_in(train.net_key(CFG.seed, n), train.ORDER_KEY)
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
    res = collect(train.Population(CFG, poisoned, 5).run(range(5)), 5)
    assert res["status"][2] == train.DIVERGED
    assert res["epochs"][2] == 1  # stopped in the epoch whose loss was not finite
    assert np.isnan(res["val_accuracy"][2]).all()
    assert all(res["status"][n] in (train.CONVERGED, train.CAPPED) for n in (0, 1, 3, 4))


def test_slots_from_memory_budget():
    budget = dataclasses.replace(CFG, run=RunOptions(memory_budget_mb=64))
    per_slot = train.bytes_per_slot(budget, budget.run.val_batch)
    assert train.choose_slots(budget, 10**6) == 64 * 2**20 // per_slot
    assert train.choose_slots(budget, 3) == 3  # never more slots than nets
    roomy = dataclasses.replace(CFG, run=RunOptions(memory_budget_mb=10**5))
    assert train.choose_slots(roomy, 10**6) == train.CPU_SLOTS  # the CPU cap (tests run on CPU)
    fixed = dataclasses.replace(CFG, run=RunOptions(slots=5))
    assert train.choose_slots(fixed, 100) == 5
