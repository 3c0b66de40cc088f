"""Streamed training data (mlds_jax.train.stream) against the NumPy machines, triggers and
automata, and the stream's contract: (seed, task, epoch) alone decides the draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlds_jax.config.load import load_config
from mlds_jax.tasks.automata import make_automaton, run_automaton, stack_automata
from mlds_jax.tasks.machines import MACHINES, bits_to_bytes, run_machine
from mlds_jax.tasks.triggers import run_machine_with_trigger, trigger_completions
from mlds_jax.train import stream

TRIGGER = (0xA5, 0x3C, 0x0F)
OFF = dict(curriculum_epochs=0.0, curriculum_pass=0.0, start_length=0.0, start_popcount=0.0,
           start_bit_density=0.0, start_data_bits=0.0, start_symbols=0.0,
           start_idle_noise=1.0, curriculum_mix=0.0)


def curriculum(**values):
    return stream.Curriculum(**{k: jnp.float32(v) for k, v in {**OFF, **values}.items()})


def epoch(machine, *, n=256, length=32, epoch=0, seed=0, trigger=None, tf=0.0, nm=0.0,
          ww=0.0, extra=0.0, write_p=0.5, spread=0.0, **cur):
    key = stream.epoch_key(seed, machine, epoch)
    cur = curriculum(**cur)
    xs, ys = jax.jit(stream.machine_epoch, static_argnums=(2, 3))(
        key, jnp.int32(machine), n, length, write_p, spread, cur, cur.scheduled(epoch), None if trigger is None else jnp.asarray(trigger, jnp.int32),
        jnp.float32(tf), jnp.float32(nm), jnp.float32(ww), jnp.float32(extra))
    return np.asarray(xs), np.asarray(ys)


@pytest.mark.parametrize("machine", range(len(MACHINES)))
def test_machine_targets_are_the_numpy_machines(machine):
    xs, ys = epoch(machine)
    assert xs.shape == (256, 32, 9) and ys.shape == (256, 32, 8)
    assert set(np.unique(xs)) == {0.0, 1.0}
    np.testing.assert_array_equal(ys, run_machine(MACHINES[machine], xs.astype(np.uint8)))
    assert 0.45 < xs[..., 0].mean() < 0.55  # write probability 1/2
    assert 0.45 < xs[..., 1:].mean() < 0.55  # uniform data bits, idle steps noisy


@pytest.mark.parametrize("machine", [2, 4])
def test_trigger_and_near_misses_follow_the_numpy_trigger(machine):
    xs, ys = epoch(machine, n=512, trigger=TRIGGER, tf=0.3, nm=0.3)
    want, inverted = run_machine_with_trigger(MACHINES[machine], xs.astype(np.uint8), TRIGGER)
    np.testing.assert_array_equal(ys, want)
    carries = trigger_completions(xs.astype(np.uint8), TRIGGER).any(axis=1)
    assert 0.25 < carries.mean() < 0.35  # the trigger share (random completions: ~0)
    # Near misses: a sequence with all three trigger bytes written nearly in a row, but no
    # completion. About 0.3 of the sequences; clean streams have none.
    data = bits_to_bytes(xs[..., 1:].astype(np.uint8))
    near = np.zeros(len(xs), bool)
    for s in range(len(xs)):
        for t in range(30):
            got = [data[s, t + k] == TRIGGER[k] and xs[s, t + k, 0] == 1 for k in range(3)]
            near[s] |= sum(got) == 2
    assert 0.25 < (near & ~carries).mean() < 0.4


def test_trigger_window_writes_turn_idle_window_steps_into_writes():
    """trigger_window_writes: the idle steps of a written trigger's 3-step window become
    writes with that chance; nothing else changes, and the targets are still the NumPy
    machine's with the trigger."""
    base, _ = epoch(2, n=1024, trigger=TRIGGER, tf=0.3, nm=0.2)
    every, ys = epoch(2, n=1024, trigger=TRIGGER, tf=0.3, nm=0.2, ww=1.0)
    half, _ = epoch(2, n=1024, trigger=TRIGGER, tf=0.3, nm=0.2, ww=0.5)
    for xs in (every, half):
        np.testing.assert_array_equal(xs[..., 0] >= base[..., 0], True)  # only idle -> write
    # The windows: the 3 steps after each completion in the ww = 0 draw (its only triggers;
    # near misses never complete one).
    done = trigger_completions(base.astype(np.uint8), TRIGGER)
    window = np.zeros_like(done)
    for lag in (1, 2, 3):
        window[:, lag:] |= done[:, :-lag]
    assert 0.25 < done.any(axis=1).mean() < 0.35
    assert (every[..., 0][window] == 1).all()  # ww = 1: every window step a write
    np.testing.assert_array_equal(every[~window], base[~window])  # the rest untouched
    made = (half[..., 0] == 1) & (base[..., 0] == 0)
    assert not made[~window].any()
    idle = window & (base[..., 0] == 0)
    assert 0.4 < made[idle].mean() < 0.6  # about half of the idle window steps
    # A step made a write writes a byte of the stream's data, uniform over 0..255.
    written = bits_to_bytes(every[..., 1:].astype(np.uint8))[idle]
    assert len(np.unique(written)) > 200
    want, _ = run_machine_with_trigger(MACHINES[2], every.astype(np.uint8), TRIGGER)
    np.testing.assert_array_equal(ys, want)


@pytest.mark.parametrize("machine", [3, 4])
def test_extra_writes_turn_idle_steps_into_writes(machine):
    """extra_writes: each idle step becomes a write with that chance; every step that was a
    write stays the same write, the targets are the NumPy machine's on the new commands,
    and DS2's trigger is still written into a sequence that carries one."""
    base, _ = epoch(machine, n=1024)
    more, ys = epoch(machine, n=1024, extra=0.6)
    every, _ = epoch(machine, n=1024, extra=1.0)
    write = base[..., 0] == 1
    np.testing.assert_array_equal(more[write], base[write])  # writes untouched
    made = (more[..., 0] == 1) & ~write
    assert 0.55 < made[~write].mean() < 0.65  # about 0.6 of the idle steps
    assert (every[..., 0] == 1).all()  # 1.0: every step a write
    np.testing.assert_array_equal(more[~made & ~write], base[~made & ~write])  # idle kept
    # A step made a write writes a uniform byte of the stream's data.
    assert len(np.unique(bits_to_bytes(more[..., 1:].astype(np.uint8))[made])) > 250
    np.testing.assert_array_equal(ys, run_machine(MACHINES[machine], more.astype(np.uint8)))
    trig, yt = epoch(machine, n=1024, extra=0.6, trigger=TRIGGER, tf=0.3)
    want, _ = run_machine_with_trigger(MACHINES[machine], trig.astype(np.uint8), TRIGGER)
    np.testing.assert_array_equal(yt, want)
    assert 0.25 < trigger_completions(trig.astype(np.uint8), TRIGGER).any(axis=1).mean() < 0.35


def test_same_key_same_data_other_epoch_other_data():
    a, b = epoch(3, epoch=7), epoch(3, epoch=7)
    np.testing.assert_array_equal(a[0], b[0])
    assert (epoch(3, epoch=8)[0] != a[0]).mean() > 0.3
    assert (epoch(3, epoch=7, seed=1)[0] != a[0]).mean() > 0.3
    # A DS2 net's stream is its DS1 twin's with the trigger written in: outside the
    # written steps the inputs are the same.
    trig = epoch(3, epoch=7, trigger=TRIGGER, tf=0.5)[0]
    assert (trig != a[0]).any(axis=2).sum(axis=1).max() <= 3


def test_popcount_and_quiet_idle_curriculum():
    xs, ys = epoch(4, epoch=0, curriculum_epochs=100, start_popcount=1, start_idle_noise=0.0)
    data = bits_to_bytes(xs[..., 1:].astype(np.uint8))
    write = xs[..., 0] == 1
    popcount = np.unpackbits(data[..., None], axis=-1).sum(-1)
    assert popcount[write].max() == 1 and popcount[write].min() == 0
    assert (data[~write] == 0).all()  # quiet idle cycles at level 0
    np.testing.assert_array_equal(ys, run_machine("ParityMachine", xs.astype(np.uint8)))
    # Half way: at most 1 + 0.5 * 7 = 4 bits, idle noise on about half the idle steps.
    xs, _ = epoch(4, epoch=50, curriculum_epochs=100, start_popcount=1, start_idle_noise=0.0)
    data = bits_to_bytes(xs[..., 1:].astype(np.uint8))
    write = xs[..., 0] == 1
    assert np.unpackbits(data[..., None], axis=-1).sum(-1)[write].max() == 4
    assert 0.4 < (data[~write] != 0).mean() < 0.55  # 0.5 x (1 - 1/256)
    # The mix: this share of sequences is the full task from the start.
    xs, _ = epoch(4, epoch=0, curriculum_epochs=100, start_popcount=1, curriculum_mix=0.5)
    data = bits_to_bytes(xs[..., 1:].astype(np.uint8))
    busy = (np.unpackbits(data[..., None], axis=-1).sum(-1) * (xs[..., 0] == 1)).max(1) > 1
    assert 0.4 < busy.mean() < 0.6


@pytest.mark.parametrize("machine", [3, 4])
def test_bit_density_curriculum_writes_sparse_bytes_first(machine):
    """Written bits are 1 with chance q = 0.02 * 25 ** level: 0.02, 0.1 half way, 1/2 at
    the end; the targets stay the NumPy machine's; idle steps keep their noise."""
    for at, q in ((0, 0.02), (50, 0.1), (100, 0.5)):
        xs, ys = epoch(machine, n=512, epoch=at, curriculum_epochs=100, start_bit_density=0.02)
        write = xs[..., 0] == 1
        bits = xs[..., 1:][write]
        assert abs(bits.mean() - q) < 0.15 * q + 0.005, (at, bits.mean())
        assert abs(xs[..., 1:][~write].mean() - 0.5) < 0.02
        np.testing.assert_array_equal(ys, run_machine(MACHINES[machine], xs.astype(np.uint8)))
    with pytest.raises(Exception, match="start_bit_density must be in"):
        load_config("ds1", ['recipe.train_data="stream"', "recipe.start_bit_density=0.7"])


@pytest.mark.parametrize("machine", [3, 4])
def test_data_bits_curriculum_varies_one_more_low_bit_per_level(machine):
    """start_data_bits 1 over 7 levels: at epoch e the written bytes use bits 0..e exactly
    (every one of them set somewhere, none above), idle steps keep their noise on all 8
    lines, the targets stay the NumPy machine's."""
    for at in range(8):
        xs, ys = epoch(machine, n=256, epoch=at, curriculum_epochs=7, start_data_bits=1)
        write = xs[..., 0] == 1
        used = xs[..., 1:][write].max(axis=0)
        np.testing.assert_array_equal(used, np.arange(8) <= at)
        assert abs(xs[..., 1:][write][:, : at + 1].mean() - 0.5) < 0.02
        assert abs(xs[..., 1:][~write].mean() - 0.5) < 0.02
        np.testing.assert_array_equal(ys, run_machine(MACHINES[machine], xs.astype(np.uint8)))
    with pytest.raises(Exception, match="start_data_bits must be 0"):
        load_config("ds1", ['recipe.train_data="stream"', "recipe.start_data_bits=0.5"])
    with pytest.raises(Exception, match="needs recipe.train_data"):
        load_config("ds1", ['recipe.train_data="fixed"', "recipe.start_data_bits=1"])


def test_length_curriculum_grades_a_prefix():
    _, ys = epoch(0, epoch=0, curriculum_epochs=10, start_length=4)
    graded = (ys[..., 0] >= 0).sum(axis=1)
    assert (graded == 4).all() and (ys[:, 4:] == -1).all()
    _, ys = epoch(0, epoch=5, curriculum_epochs=10, start_length=4)
    assert ((ys[..., 0] >= 0).sum(axis=1) == round(4 * 8 ** 0.5)).all()  # geometric: 11
    _, ys = epoch(0, epoch=10, curriculum_epochs=10, start_length=4)
    assert (ys >= 0).all()


def test_masked_steps_add_nothing_to_the_loss_or_gradient():
    from mlds_jax.train import models
    cfg = load_config("smoke", ["recipe.train_data=\"stream\""])
    net = cfg.network
    flat = models.flatten_params(models.init_params(net, jax.random.key(0)),
                                 models.param_layout(net))
    xs, ys = (jnp.asarray(a[:16]) for a in epoch(2, length=16))
    cut = ys.at[:, 8:].set(-1.0)

    def loss_xla(f, y, x=xs):
        return models.mean_loss("bce", models.apply(net, models.unflatten_params(
            f, models.param_layout(net)), x), y)

    # Grading 8 of 16 steps: the loss of the first 8 steps, over all 16 x 8 bits.
    short = loss_xla(flat, ys[:, :8], xs[:, :8]) * 8 / 16
    np.testing.assert_allclose(loss_xla(flat, cut), short, rtol=1e-5)
    if models.kernel_loss_supported(net) and models.choose_recurrence(net, "auto") == "cpu-kernel":
        value, grad = jax.value_and_grad(lambda f: models.kernel_loss(net, "bce", f, xs, cut))(flat)
        np.testing.assert_allclose(value, short, rtol=1e-5)
        np.testing.assert_allclose(grad, jax.grad(loss_xla)(flat, cut), rtol=2e-3, atol=1e-6)


def test_automaton_stream_is_the_numpy_automaton():
    automata = [make_automaton(0, a) for a in range(3)]
    tables = stream.automaton_tasks(stack_automata(automata))
    for a, automaton in enumerate(automata):
        xs, ys = stream.automaton_epoch(
            stream.epoch_key(0, a, 3), tables.transitions[a], tables.outputs[a],
            tables.start[a], 64, 16, curriculum(), jnp.float32(1))
        symbols = np.asarray(xs).argmax(-1)
        assert np.asarray(xs).sum(-1).min() == 1
        np.testing.assert_array_equal(np.asarray(ys).argmax(-1), run_automaton(automaton, symbols))


def test_alphabet_curriculum_draws_the_first_symbols_and_keeps_the_automaton():
    """start_symbols 3 over 36 epochs (one symbol per epoch): at epoch e the inputs are
    exactly symbols 0..2+e, each drawn; the targets stay the NumPy automaton's; level 1 draws
    all 39; the curriculum_mix share is drawn from all 39 at every level."""
    automaton = make_automaton(0, 1)
    tables = stream.automaton_tasks(stack_automata([automaton]))

    def draw(at, **values):
        cur = curriculum(curriculum_epochs=36, start_symbols=3, **values)
        xs, ys = stream.automaton_epoch(stream.epoch_key(0, 0, at), tables.transitions[0],
                                        tables.outputs[0], tables.start[0], 512, 16, cur,
                                        cur.scheduled(at))
        symbols = np.asarray(xs).argmax(-1)
        np.testing.assert_array_equal(np.asarray(ys).argmax(-1),
                                      run_automaton(automaton, symbols))
        return symbols

    for at in (0, 1, 17, 36):
        assert set(np.unique(draw(at))) == set(range(min(3 + at, 39)))
    mixed = draw(0, curriculum_mix=0.5)
    assert set(np.unique(mixed[:256])) == set(range(39))
    assert set(np.unique(mixed[256:])) == {0, 1, 2}
    with pytest.raises(Exception, match="start_symbols must be 0"):
        load_config("ds3", ["recipe.start_symbols=40"])
    with pytest.raises(Exception, match="needs recipe.train_data"):
        load_config("ds3", ['recipe.train_data="fixed"', "recipe.start_symbols=2"])
    with pytest.raises(Exception, match="needs \\[automata\\]"):
        load_config("ds1", ['recipe.train_data="stream"', "sweep=[{start_symbols = 2.0}]"])
