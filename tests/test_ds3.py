"""DS3 end to end on a tiny store: automata stored with the dataset, LSTM nets trained with
softmax cross-entropy, symbol accuracy recomputed independently with PyTorch."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import mlds_jax
from mlds_jax import generate as gen
from mlds_jax.config.load import load_config
from mlds_jax.config.sections import ConfigError
from mlds_jax.tasks.automata import make_automaton, run_automaton
from mlds_jax.train import cpu_kernel
from mlds_jax.train.data import make_automaton_task_data
from tests.torch_reference import torch_net

TINY = ['name="ds3-tiny"', "automata.count=3", "recipe.train_sequences=64",
        "recipe.train_length=16", "recipe.val_sequences=32", "recipe.val_length=24",
        "recipe.check_every=2", "recipe.max_epochs=4", "seed=11"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds3") / "ds3.zarr"
    cfg = load_config("ds3", TINY)
    gen.generate(cfg, out, per_task=2)
    return cfg, mlds_jax.open_dataset(out)


def test_store_shapes_and_names(store):
    cfg, ds = store
    assert ds.weights.shape == (6, 136846)
    assert ds.task_names == ["automaton_000", "automaton_001", "automaton_002"]
    assert ds.attrs["accuracy_names"] == ["val_symbol_accuracy", "val_sequences_right"]
    assert ds.attrs["criterion_names"] == ["val_symbol_accuracy"]
    np.testing.assert_array_equal(np.asarray(ds.task[:]), np.arange(6) % 3)
    assert (np.asarray(ds.status[:]) > 0).all()


def test_automata_regenerate_from_the_store_alone(store):
    cfg, ds = store
    automata = ds.automata()
    assert len(automata) == 3
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 39, (4, 50))
    for a, stored in enumerate(automata):
        fresh = make_automaton(cfg.seed, a)
        np.testing.assert_array_equal(stored.transitions, fresh.transitions)
        np.testing.assert_array_equal(stored.outputs, fresh.outputs)
        assert stored.start == fresh.start
        np.testing.assert_array_equal(run_automaton(stored, inputs), run_automaton(fresh, inputs))


def test_symbol_accuracy_matches_torch(store):
    cfg, ds = store
    r = cfg.recipe
    for n in range(6):
        d = make_automaton_task_data(cfg.seed, n % 3, train_sequences=r.train_sequences,
                                     train_length=r.train_length, val_sequences=r.val_sequences,
                                     val_length=r.val_length)
        net = torch_net(cfg.network, np.asarray(ds.weights[n]))
        with torch.no_grad():
            logits = net(torch.tensor(d.val_inputs)).numpy()
        right = logits.argmax(-1) == d.val_targets.argmax(-1)  # (S, T)
        np.testing.assert_allclose(ds.val_accuracy[n], [right.mean(), right.all(axis=1).mean()],
                                   atol=1e-6)


def test_ds3_config_rules():
    with pytest.raises(ConfigError, match="either"):
        load_config("ds3", ["trigger.bytes=[1, 2, 3]"])
    with pytest.raises(ConfigError, match="automata.count"):
        load_config("ds3", ["automata.count=0"])
    cfg = load_config("ds3")
    assert cfg.num_tasks == 100 and cfg.symbols
    assert "tasks" not in cfg.identity() and cfg.identity()["automata"] == {"count": 100}


def test_ds3_trains_on_the_whole_net_kernel_on_a_cpu():
    """`mlds generate ds3` on a CPU with a compiler: one kernel call per net and minibatch
    (training and validation), not XLA's recurrence."""
    from mlds_jax.train import models, population, step

    cfg = load_config("ds3")
    if not cpu_kernel.available():
        pytest.skip(cpu_kernel.unavailable_reason())
    assert models.choose_recurrence(cfg.network, cfg.run.recurrence) == "cpu-kernel"
    assert step._whole_net_kernel(cfg)


# The DS3 network on a tiny recipe with plain Adam (no decay), for the trainer against torch;
# on one fixed training set, which torch replays (streamed data: tests/test_stream.py).
ADAM = ['name="ds3-adam"', 'recipe.train_data="fixed"', "automata.count=2", "recipe.train_sequences=48",
        "recipe.train_length=10", "recipe.batch_size=16", "recipe.val_sequences=16",
        "recipe.val_length=20", "recipe.check_every=3", "recipe.max_epochs=3",
        "recipe.decay_half_life=0.0", "recipe.warmup_epochs=0.0", "recipe.learning_rate=3e-3",
        "seed=5"]


@pytest.mark.parametrize("recurrence", ["auto", "xla"])
def test_training_equals_torch_adam_on_same_order(recurrence):
    """Net 1 retraced with torch.nn.LSTM + Linear head, CrossEntropyLoss and
    torch.optim.Adam on the same minibatches in the same order: the trainer's DS3 math is
    plain Adam on mean softmax cross-entropy, both on the whole-net CPU kernel (auto, on a
    CPU with a compiler) and on XLA's recurrence."""
    import jax

    from mlds_jax.generate import task_data
    from mlds_jax.train import models, population, step

    cfg = load_config("ds3", ADAM + [f"run.recurrence={recurrence}"])
    if recurrence == "auto" and cpu_kernel.available():
        assert step._whole_net_kernel(cfg)
    data = task_data(cfg)[0]
    n = 1
    done = next(iter(population.Population(cfg, data, 1).run([n])))
    r = cfg.recipe
    net = torch_net(cfg.network, done.initial_weights[0])
    opt = torch.optim.Adam(net.parameters(), lr=r.learning_rate)
    order_key = jax.random.fold_in(step.net_key(cfg.seed, n), step.ORDER_KEY)
    t = n % cfg.num_tasks
    xs, ys = torch.tensor(data.train_inputs[t]), torch.tensor(data.train_targets[t])
    losses = []
    for epoch in range(done.epochs[0]):
        perm = np.array(jax.random.permutation(jax.random.fold_in(order_key, epoch),
                                                 r.train_sequences))
        batch_losses = []
        for idx in perm.reshape(-1, r.batch_size):
            opt.zero_grad()
            logits = net(xs[idx])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     ys[idx].argmax(-1).reshape(-1))
            loss.backward()
            opt.step()
            batch_losses.append(loss.item())
        losses.append(np.mean(batch_losses))
    assert done.epochs[0] == r.max_epochs
    flat = torch.cat([p.detach().flatten() for p in net.state_dict().values()]).numpy()
    assert flat.shape == (models.num_params(cfg.network),)
    assert np.abs(flat - done.weights[0]).max() <= 1e-4
    assert np.abs(flat - done.initial_weights[0]).max() > 1e-3  # it did train
    np.testing.assert_allclose(done.loss_curve[0][: len(losses)], losses, rtol=1e-4)


def test_info_shows_the_converged_share_per_automaton_size(store):
    from click.testing import CliRunner

    from mlds_jax.cli import main
    from mlds_jax.research.reader import size_bin_summary

    cfg, ds = store
    states = [make_automaton(11, a).n_states for a in range(3)]
    status = np.asarray(ds.status[:])
    rows = size_bin_summary(ds)
    assert [r["states"] for r in rows] == ["16-23", "24-31", "32-39", "40-48"]
    for r in rows:
        lo, hi = map(int, r["states"].split("-"))
        mine = [n for n in range(6) if lo <= states[n % 3] <= hi]
        assert r["automata"] == sum(lo <= s <= hi for s in states)
        assert (r["finished"], r["converged"]) == (len(mine), int((status[mine] == 1).sum()))
    out = CliRunner().invoke(main, ["info", str(ds.path)])
    assert out.exit_code == 0 and "by automaton size" in out.output


def _replay_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ds3_replay", "benchmarks/ds3_replay.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_replay_check_reproduces_the_stored_validation(store):
    """benchmarks/ds3_replay.py's own LSTM (torch layers filled through the stored layout)
    and its own replay of the stored automaton tables give, on the validation set, exactly
    the symbol accuracy the trainer stored; run as a user runs it, it scores every net."""
    cfg, ds = store
    replay = _replay_module()
    r, tables = cfg.recipe, ds.store.tables()
    for n in range(len(ds)):
        a = int(ds.task[n])
        d = make_automaton_task_data(cfg.seed, a, train_sequences=r.train_sequences,
                                     train_length=r.train_length, val_sequences=r.val_sequences,
                                     val_length=r.val_length)
        symbols = d.val_inputs.argmax(-1)
        want = replay.replay(tables["automaton_transitions"][a], tables["automaton_outputs"][a],
                             int(tables["automaton_start"][a]), symbols)
        np.testing.assert_array_equal(want, d.val_targets.argmax(-1))
        net = replay.torch_lstm_net(ds.config["network"], ds.layout, np.asarray(ds.weights[n]))
        with torch.no_grad():
            right = net(torch.tensor(d.val_inputs)).argmax(-1).numpy() == want
        np.testing.assert_allclose(ds.val_accuracy[n], [right.mean(), right.all(axis=1).mean()],
                                   atol=1e-6)
    proc = subprocess.run([sys.executable, "benchmarks/ds3_replay.py", str(ds.path), "--nets",
                           "all", "--sequences", "16"], capture_output=True, text=True, check=True)
    assert f"{len(ds)} nets (all), 16 fresh sequences of {4 * r.train_length} steps" in proc.stdout
    assert proc.stdout.count("\n| ") == len(ds) + 1  # the header and one row per net


def test_haar_orthogonal_is_numpy_qr_with_positive_diagonal():
    """The QR-free orthogonal init equals NumPy's QR of the same normal draw, R's diagonal
    made positive (the Haar-distributed Q of jax.nn.initializers.orthogonal)."""
    import jax

    from mlds_jax.train.step import haar_orthogonal

    for seed, n in [(0, 64), (3, 5), (9, 1)]:
        key = jax.random.PRNGKey(seed)
        q, r = np.linalg.qr(np.asarray(jax.random.normal(key, (n, n)), np.float64))
        want = q * np.sign(np.diag(r))
        np.testing.assert_allclose(np.asarray(haar_orthogonal(key, n)), want, atol=2e-5)


def test_net_init_calls_no_lapack():
    """The population's init program holds no LAPACK call: its batched QR (geqrf/orgqr)
    deadlocked XLA's CPU thread pool now and then (a race: one DS3 run in two hung for ever
    at 0% CPU), and a run cannot wait on luck."""
    import jax
    import jax.numpy as jnp

    from mlds_jax.train import step

    cfg = load_config("ds3", ["automata.count=3", "sweep=[{recurrent_gain = 0.5}]"])
    hlo = jax.jit(jax.vmap(lambda n: step.init_net(cfg, n))).lower(jnp.arange(3)).as_text()
    assert "custom_call" not in hlo and "lapack" not in hlo


def test_ds3_with_orthogonal_recurrent_init_finishes():
    """`recurrent_gain` > 0 on the DS3 net, run as users run it (subprocess, relative path):
    such runs hung for ever at 0% CPU now and then (test_net_init_calls_no_lapack holds
    the cause away deterministically). Every net trains, and each gate block of every
    layer's stored initial weight_hh is orthogonal x the gain."""
    import shutil

    from mlds_jax.train import models

    out = "out/test-ds3-orthogonal.zarr"
    shutil.rmtree(out, ignore_errors=True)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mlds_jax.cli", "generate", "ds3", "--out", out,
             "--per-task", "1", "--no-progress", *(f"--set={s}" for s in TINY),
             "--set=recipe.max_epochs=2", "--set=sweep=[{recurrent_gain = 0.5}]"],
            capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        ds = mlds_jax.open_dataset(out)
        cfg = load_config("ds3", TINY)
        assert len(ds) == 3 and (np.asarray(ds.status) > 0).all()
        h = cfg.network.hidden_size
        for flat in ds.load_weights(initial=True):
            rnn = models.unflatten_params(flat, models.param_layout(cfg.network))["rnn"]
            for layer in range(cfg.network.num_layers):
                for g in range(4):  # LSTM gates i, f, g, o
                    block = np.asarray(rnn[f"weight_hh_l{layer}"])[g * h: (g + 1) * h]
                    np.testing.assert_allclose(block @ block.T, 0.25 * np.eye(h), atol=2e-6)
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.mark.parametrize("alphabet", [39, 3])
def test_replay_by_step_is_the_accuracy_at_each_step(store, alphabet):
    """`ds3_replay.py --by-step [--symbols K]` prints, per automaton-size bin, the median
    over nets of the symbol accuracy at step t on inputs from the first K symbols;
    recomputed here with the generator's automata (run_automaton) and the test suite's own
    torch net on the same fresh symbols."""
    from mlds_jax.research.reader import STATE_BINS

    cfg, ds = store
    length, sequences, seed = 8, 16, 7
    proc = subprocess.run([sys.executable, "benchmarks/ds3_replay.py", str(ds.path), "--nets",
                           "all", "--sequences", str(sequences), "--length", str(length),
                           "--seed", str(seed), "--by-step", "--symbols", str(alphabet)],
                          capture_output=True, text=True, check=True)
    assert ("over the first 3 symbols" in proc.stdout) == (alphabet == 3)
    table = proc.stdout.split("median symbol accuracy at step t")[1]
    header, _, *lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    assert header.split("|")[3:-1] == [f" t={t} " for t in (1, 2, 3, 4, 6, 8)]
    symbols = np.random.default_rng(seed).integers(0, alphabet, (sequences, length))
    x = torch.nn.functional.one_hot(torch.tensor(symbols), 39).float()
    by_net = {}
    for n in range(len(ds)):
        automaton = make_automaton(cfg.seed, int(ds.task[n]))
        with torch.no_grad():
            got = torch_net(cfg.network, np.asarray(ds.weights[n]))(x).argmax(-1).numpy()
        by_net[n] = (automaton.n_states,
                     (got == run_automaton(automaton, symbols)).mean(axis=0))
    want_rows = []
    for lo, hi in STATE_BINS:
        acc = [a for s, a in by_net.values() if lo <= s <= hi]
        if acc:
            med = np.median(np.stack(acc), axis=0)[[0, 1, 2, 3, 5, 7]]
            want_rows.append([f"{lo}-{hi}", str(len(acc)), *(f"{v:.3f}" for v in med)])
    assert [[c.strip() for c in ln.split("|")[1:-1]] for ln in lines] == want_rows
