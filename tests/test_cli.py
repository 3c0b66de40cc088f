"""The `mlds` command end to end: a killed run resumes with nothing lost, bad input fails
with one line that names the problem, and nothing stored is ever deleted by an error."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

import mlds_jax
from mlds_jax import generate as gen
from mlds_jax.cli import main
from mlds_jax.config.load import load_config
from mlds_jax.config.sections import SWEEPABLE

PER_TASK = 4  # 20 nets
ARRAYS = ("weights", "initial_weights", "task", "seed", "status", "epochs", "loss_curve",
          "val_accuracy")


def mlds(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "mlds_jax.cli", *args], capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode:
        raise AssertionError(f"mlds {args} failed:\n{proc.stderr}")
    return proc


def read_all(path):
    ds = mlds_jax.open_dataset(path)
    return {name: np.asarray(getattr(ds, name)[:]) for name in ARRAYS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, all 20 nets at once."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    mlds("generate", "smoke", "--out", str(out), "--per-task", str(PER_TASK), "--no-progress")
    return out


def test_uninterrupted_run_fills_every_row(reference):
    got = read_all(reference)
    n = 5 * PER_TASK
    assert got["weights"].shape == (n, 4364)
    assert got["loss_curve"].shape == (n, 10)
    assert (got["status"] > 0).all()
    np.testing.assert_array_equal(got["task"], np.arange(n) % 5)
    assert np.isfinite(got["weights"]).all()
    ds = mlds_jax.open_dataset(reference)
    assert ds.attrs["config"] == load_config("smoke").identity()
    last = ds.layout[-1]
    assert (last["torch_key"], last["offset"] + last["shape"][0]) == ("head.6.bias", 4364)
    # net(n) turns a row back into the pytree recorded in the layout table.
    tree = ds.net(3)
    assert tree["rnn"]["weight_hh_l0"].shape == (36, 12)
    assert tree["head_3"]["bias"].shape == (8,)
    np.testing.assert_array_equal(tree["head_3"]["bias"], got["weights"][3][-8:])


def test_compiled_steps_come_from_the_cache_and_train_the_same_nets(tmp_path, reference):
    """A run fills MLDS_JAX_COMPILE_CACHE; the next run loads the population's step from it
    and stores the same nets as the reference (compiled in another cache); `0` writes
    nothing."""
    cache = tmp_path / "cache"
    args = ["generate", "smoke", "--per-task", str(PER_TASK), "--no-progress"]

    def run(out, setting):
        env = {**os.environ, "MLDS_JAX_COMPILE_CACHE": setting,
               "XDG_CACHE_HOME": str(tmp_path / "home-cache")}
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        subprocess.run([sys.executable, "-m", "mlds_jax.cli", *args, "--out", str(out)],
                       env=env, check=True, capture_output=True, timeout=600)
        return read_all(out)

    run(tmp_path / "cold.zarr", str(cache))
    steps = sorted(cache.glob("jit_population_step-*-cache"))
    assert steps, sorted(p.name for p in cache.iterdir())
    stamps = [p.stat().st_mtime_ns for p in steps]
    warm = run(tmp_path / "warm.zarr", str(cache))
    assert [p.stat().st_mtime_ns for p in steps] == stamps  # read, not compiled and rewritten
    ref = read_all(reference)
    for name in ARRAYS:
        np.testing.assert_array_equal(warm[name], ref[name], err_msg=name)
    entries = sorted(cache.iterdir())
    run(tmp_path / "off.zarr", "0")
    assert sorted(cache.iterdir()) == entries
    assert not (tmp_path / "home-cache" / "mlds-jax" / "jax").exists()


def test_compile_cache_directory_follows_the_environment(tmp_path):
    from mlds_jax.train.compile_cache import cache_dir

    assert cache_dir({"MLDS_JAX_COMPILE_CACHE": "off", "JAX_COMPILATION_CACHE_DIR": "/x"}) is None
    assert cache_dir({"MLDS_JAX_COMPILE_CACHE": str(tmp_path)}) == tmp_path
    assert str(cache_dir({"JAX_COMPILATION_CACHE_DIR": "/x"})) == "/x"
    assert cache_dir({"XDG_CACHE_HOME": "/c"}).as_posix() == "/c/mlds-jax/jax"


def test_cpu_optimization_level_is_added_unless_chosen_elsewhere():
    from mlds_jax.train.compile_cache import CPU_OPTIMIZATION, cpu_optimization

    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    assert cpu_optimization(env)
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {CPU_OPTIMIZATION}"
    assert not cpu_optimization(env)  # once
    mine = {"XLA_FLAGS": "--xla_backend_optimization_level=3"}
    assert not cpu_optimization(mine) and mine["XLA_FLAGS"] == "--xla_backend_optimization_level=3"
    gpu = {"JAX_PLATFORMS": "cuda"}
    assert not cpu_optimization(gpu) and "XLA_FLAGS" not in gpu


def test_the_cli_sets_compiler_flags_before_jax_starts_its_backend():
    """XLA reads XLA_FLAGS once, when JAX first uses a device: importing the CLI must not."""
    code = ("import mlds_jax.cli\n"
            "from jax._src import xla_bridge\n"
            "assert not xla_bridge.backends_are_initialized()\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_killed_run_resumes_with_nothing_lost(tmp_path, reference):
    out = tmp_path / "killed.zarr"
    args = [sys.executable, "-m", "mlds_jax.cli", "generate", "smoke", "--out", str(out),
            "--per-task", str(PER_TASK), "--slots", "3", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    stored = 0
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                status = np.asarray(mlds_jax.open_dataset(out).status[:])
            except Exception:  # not created yet
                continue
            stored = int((status > 0).sum())
            if stored >= 3:
                break
        assert proc.poll() is None, "run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    before = read_all(out)
    done = before["status"] > 0
    assert 3 <= done.sum() < 5 * PER_TASK

    again = mlds("generate", "smoke", "--out", str(out), "--per-task", str(PER_TASK),
                 "--slots", "3", "--no-progress")
    # Exactly the stored nets are skipped: none trained twice, none missing.
    assert f"resuming: {done.sum()} of {5 * PER_TASK} nets already in" in again.stdout
    assert f"training {5 * PER_TASK - done.sum()} nets" in again.stdout
    after, ref = read_all(out), read_all(reference)
    for name in ARRAYS:  # rows stored before the kill are untouched
        np.testing.assert_array_equal(after[name][done], before[name][done])
    np.testing.assert_array_equal(after["status"], ref["status"])
    np.testing.assert_array_equal(after["epochs"], ref["epochs"])
    np.testing.assert_array_equal(after["initial_weights"], ref["initial_weights"])
    assert np.abs(after["weights"] - ref["weights"]).max() <= 1e-5
    np.testing.assert_allclose(after["loss_curve"], ref["loss_curve"], atol=1e-5)
    # A third run has nothing to do.
    third = mlds("generate", "smoke", "--out", str(out), "--per-task", str(PER_TASK))
    assert f"resuming: {5 * PER_TASK} of {5 * PER_TASK}" in third.stdout


def test_bigger_tier_extends_the_store(tmp_path, reference):
    out = tmp_path / "grow.zarr"
    mlds("generate", "smoke", "--out", str(out), "--per-task", "1", "--no-progress")
    small = read_all(out)
    assert small["status"].shape == (5,)
    # A complete store is packed: one zero-copy memory map of all weights.
    np.testing.assert_array_equal(mlds_jax.open_dataset(out).weights_memmap(), small["weights"])
    grown = mlds("generate", "smoke", "--out", str(out), "--per-task", "2", "--no-progress")
    assert "resuming: 5 of 10" in grown.stdout
    after, ref = read_all(out), read_all(reference)
    assert after["status"].shape == (10,)
    np.testing.assert_array_equal(after["weights"][:5], small["weights"])
    # Unpacked to be extended, packed again once complete.
    np.testing.assert_array_equal(mlds_jax.open_dataset(out).weights_memmap(), after["weights"])
    assert np.abs(after["weights"] - ref["weights"][:10]).max() <= 1e-5


def test_info_prints_per_task_table(reference):
    result = CliRunner().invoke(main, ["info", str(reference)])
    assert result.exit_code == 0, result.output
    ref = read_all(reference)
    for t, name in enumerate(mlds_jax.open_dataset(reference).task_names):
        line = next(ln for ln in result.output.splitlines() if name in ln)
        cells = [c.strip() for c in line.split("│") if c.strip()]
        mine = ref["task"] == t
        assert cells[1] == f"{mine.sum()}/{mine.sum()}"
        assert cells[2].startswith(str((ref["status"][mine] == 1).sum()))
        assert cells[3] == str((ref["status"][mine] == 2).sum())
        assert float(cells[7]) == pytest.approx(ref["val_accuracy"][mine, 0].mean(), abs=1e-4)
        # the worst pin (what "converged" is judged on) and whole sequences right
        assert float(cells[8]) == pytest.approx(ref["val_accuracy"][mine, 1].mean(), abs=1e-4)
        assert float(cells[9]) == pytest.approx(ref["val_accuracy"][mine, 2].mean(), abs=1e-3)


# --- bad input: one line naming the problem, non-zero exit, nothing deleted -------------


def fails(args, *needles):
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    text = result.output
    for needle in needles:
        assert needle in text, text
    return lines


@pytest.fixture
def seeded_store(tmp_path):
    """A smoke store with one row written by hand (no training needed)."""
    out = tmp_path / "s.zarr"
    cfg = load_config("smoke")
    store = gen.open_store(cfg, out, n_nets=10)
    store.write_rows([0], weights=np.ones((1, 4364), np.float32),
                     initial_weights=np.zeros((1, 4364), np.float32), task=np.zeros(1, np.int32),
                     seed=np.zeros(1, np.uint64), status=np.ones(1, np.uint8),
                     epochs=np.full(1, 4, np.int32), loss_curve=np.zeros((1, 10), np.float32),
                     val_accuracy=np.ones((1, len(cfg.accuracy_names)), np.float32),
                     hyperparameters=np.zeros((1, len(SWEEPABLE)), np.float32),
                     seq_steps=np.full(1, 4 * 128 * 16, np.int64))
    return out


def still_there(path):
    ds = mlds_jax.open_dataset(path)
    assert ds.status[0] == 1 and (np.asarray(ds.weights[0]) == 1).all()


def test_unknown_config_key_is_named(tmp_path):
    lines = fails(["generate", "smoke", "--out", str(tmp_path / "x"), "--per-task", "1",
                   "--set", "recipe.learnin_rate=1e-3"], "recipe.learnin_rate",
                  "recipe.learning_rate")
    assert len(lines) == 1
    assert not (tmp_path / "x").exists()
    toml = tmp_path / "bad.toml"
    toml.write_text('extends = "smoke"\n[network]\nhiden_size = 3\n')
    assert len(fails(["generate", str(toml), "--out", str(tmp_path / "y"), "--per-task", "1"],
                     "network.hiden_size")) == 1
    assert len(fails(["generate", "nosuchconfig", "--out", str(tmp_path / "y"),
                      "--per-task", "1"], "nosuchconfig")) == 1


@pytest.mark.parametrize("args,needle", [
    (["--per-task", "0"], "--per-task"),
    (["--per-task", "-3"], "--per-task"),
    (["--per-task", "1", "--slots", "0"], "--slots"),
    (["--per-task", "1", "--set", "recipe.batch_size=0"], "recipe.batch_size"),
    (["--per-task", "1", "--set", "recipe.max_epochs=7"], "recipe.max_epochs"),
    (["--per-task", "1", "--set", "recipe.learning_rate=fast"], "recipe.learning_rate"),
])
def test_non_positive_and_bad_values(tmp_path, args, needle):
    fails(["generate", "smoke", "--out", str(tmp_path / "x"), *args], needle)
    assert not (tmp_path / "x").exists()


def test_store_made_with_another_config_is_refused(seeded_store):
    lines = fails(["generate", "smoke", "--out", str(seeded_store), "--per-task", "1",
                   "--set", "recipe.learning_rate=0.01"],
                  "recipe.learning_rate", "--overwrite")
    assert len(lines) == 1
    still_there(seeded_store)
    fails(["generate", "smoke", "--out", str(seeded_store), "--per-task", "1", "--seed", "9"],
          "seed")
    still_there(seeded_store)


def test_replace_other_config_resumes_its_own_store_and_replaces_another(tmp_path):
    """`make demo`'s flag, as the demo runs it: a subprocess in the store's directory with a
    relative --out. The same config resumes (nothing retrained); another config (a recipe
    changed since) replaces the store; the refusal without the flag stays as it was."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "mlds_jax.cli", "generate", "smoke",
                               "--out", "demo.zarr", "--per-task", "1", "--no-progress", *args],
                              capture_output=True, text=True, timeout=600, cwd=tmp_path)

    first = run("--replace-other-config")
    assert first.returncode == 0, first.stderr
    assert "(5 trained now" in first.stdout
    before = read_all(tmp_path / "demo.zarr")
    again = run("--replace-other-config")
    assert again.returncode == 0 and "(0 trained now" in again.stdout, again.stderr
    assert "replacing" not in again.stderr
    np.testing.assert_array_equal(read_all(tmp_path / "demo.zarr")["weights"], before["weights"])
    refused = run("--set", "recipe.learning_rate=0.01")
    assert refused.returncode == 1 and "--overwrite" in refused.stderr
    other = run("--set", "recipe.learning_rate=0.01", "--replace-other-config")
    assert other.returncode == 0, other.stderr
    assert "recipe.learning_rate" in other.stderr and "replacing it" in other.stderr
    assert "(5 trained now" in other.stdout
    ds = mlds_jax.open_dataset(tmp_path / "demo.zarr")
    assert ds.config["recipe"]["learning_rate"] == 0.01
    assert (np.asarray(ds.weights[:]) != before["weights"]).any()


def test_replace_other_config_is_for_one_writer(seeded_store):
    lines = fails(["generate", "smoke", "--out", str(seeded_store), "--per-task", "1",
                   "--set", "recipe.learning_rate=0.01", "--replace-other-config",
                   "--ids", "0:64"], "--replace-other-config", "one writer")
    assert len(lines) == 1
    still_there(seeded_store)


def test_unwritable_path(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    lines = fails(["generate", "smoke", "--out", str(blocker / "store.zarr"), "--per-task", "1"],
                  str(blocker))
    assert len(lines) == 1
    assert blocker.read_text() == "not a directory"


def test_damaged_store(seeded_store):
    meta = seeded_store / "epochs" / "zarr.json"
    meta.write_text("{ this is not json")
    lines = fails(["generate", "smoke", "--out", str(seeded_store), "--per-task", "2"], "epochs")
    assert len(lines) == 1
    assert (seeded_store / "weights").is_dir()  # nothing deleted
    fails(["info", str(seeded_store)], "epochs")
    os.remove(meta)
    fails(["info", str(seeded_store)], "epochs")


def test_info_on_missing_store(tmp_path):
    assert len(fails(["info", str(tmp_path / "nothing")], "nothing")) == 1


def test_overwrite_replaces_a_store(seeded_store):
    cfg = load_config("smoke", ["recipe.learning_rate=0.01"])
    gen.open_store(cfg, seeded_store, n_nets=5, overwrite=True)
    ds = mlds_jax.open_dataset(seeded_store)
    assert ds.config["recipe"]["learning_rate"] == 0.01
    assert (np.asarray(ds.status[:]) == 0).all()
    assert json.loads((seeded_store / "zarr.json").read_text())["zarr_format"] == 3


def test_pack_killed_between_its_two_renames_is_finished_on_resume(tmp_path, reference):
    """The only window in which a killed pack leaves the weights array missing."""
    import shutil

    out = tmp_path / "swap.zarr"
    shutil.copytree(reference, out)
    ref = read_all(reference)
    os.rename(out / "weights", out / ".weights.old")  # killed right after the first rename
    fails(["info", str(out)], "weights")  # a reader is told, nothing is changed
    assert (out / ".weights.old").is_dir()
    again = mlds("generate", "smoke", "--out", str(out), "--per-task", str(PER_TASK))
    assert f"resuming: {5 * PER_TASK} of {5 * PER_TASK}" in again.stdout
    np.testing.assert_array_equal(read_all(out)["weights"], ref["weights"])
    assert not (out / ".weights.old").exists()


def test_impossible_recurrence_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "x.zarr"
    lines = fails(["generate", "ds3", "--out", str(out), "--per-task", "1",
                   "--set", "network.activation=gelu", "--set", "run.recurrence=cpu-kernel"],
                  "run.recurrence=cpu-kernel", "LSTM nets whole")
    assert len(lines) == 1 and not out.exists()
    fails(["generate", "smoke", "--out", str(out), "--per-task", "1",
           "--set", "run.recurrence=fast"], "run.recurrence must be one of")
    assert not out.exists()
