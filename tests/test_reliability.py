"""A hostile but realistic user: stop signals, a full disk, damaged chunks, a read-only store,
absurd tiers, killed (un)packs, leftovers, a reader across a repack. Every case ends in one
line (never a traceback) and, where the store survives, in a store equal to an uninterrupted
run that `mlds verify` passes.

Signals and the disk go through real subprocesses; the full disk and the read-only store
need a private mount namespace (`unshare -rm`: a small tmpfs), and are skipped where the
machine does not allow one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import mlds_jax
from mlds_jax import generate as gen
from mlds_jax.config.load import load_config
from mlds_jax.store.rawrows import pack
from mlds_jax.store.verify import verify

from .stores import ROW_ARRAYS, assert_same_as, build_store, read_all

PER_TASK = 2  # smoke: 10 nets, chunks of 4 rows (3 chunks)
N = 5 * PER_TASK
CLI = [sys.executable, "-m", "mlds_jax.cli"]


def mlds(*args, check=True, **kw):
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)
    if check and proc.returncode:
        raise AssertionError(f"mlds {args} failed:\n{proc.stderr}")
    return proc


def one_line_error(proc, rc=1) -> str:
    """The command failed with exit status `rc` and said why in one line, no traceback."""
    assert proc.returncode == rc, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted smoke run of 10 nets, packed (as generate leaves a complete store)."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    gen.generate(load_config("smoke"), out, PER_TASK)
    return out


@pytest.fixture
def unpacked(reference, tmp_path):
    """A copy of the reference in the chunked layout the generator writes."""
    out = tmp_path / "copy.zarr"
    shutil.copytree(reference, out)
    pack(out, unpack=True)
    return out


# ---- stop signals -------------------------------------------------------------------------


def _stored(out) -> int:
    try:
        return int((mlds_jax.open_dataset(out).store.read_array("status") > 0).sum())
    except Exception:  # noqa: BLE001 - not created yet, or mid-write
        return 0


def test_a_stop_that_jax_wraps_in_its_own_error_is_still_a_stop():
    """A signal handled while JAX compares pytree metadata (it calls back into Python while
    tracing) comes out as JAX's ValueError caused by our Interrupted; the run must still
    stop in one line, not report a bug (seen once under load, mid-compile)."""
    from jax import tree_util

    from mlds_jax.signals import Interrupted, stop_signals

    class Meta:
        def __eq__(self, other):
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs at the next instruction
            return True

        def __hash__(self):
            return 0

    @tree_util.register_pytree_node_class
    class Node:
        def __init__(self, meta):
            self.meta = meta

        def tree_flatten(self):
            return (), self.meta

        @classmethod
        def tree_unflatten(cls, meta, children):
            return cls(meta)

    def raise_stop(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGINT, raise_stop)
    try:  # what JAX does to a stop raised inside it
        with pytest.raises(ValueError, match="equality of metadata") as bare:
            tree_util.tree_structure(Node(Meta())) == tree_util.tree_structure(Node(Meta()))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert isinstance(bare.value.__cause__, Interrupted)
    with pytest.raises(Interrupted) as stop:
        with stop_signals.installed():
            tree_util.tree_structure(Node(Meta())) == tree_util.tree_structure(Node(Meta()))
    assert stop.value.exit_code == 128 + signal.SIGINT


@pytest.mark.parametrize("sig,when", [(signal.SIGINT, "compile"), (signal.SIGTERM, "2 nets")])
def test_stop_signal_says_one_line_and_the_rerun_finishes(tmp_path, reference, sig, when):
    out = tmp_path / "stopped.zarr"
    args = ["generate", "smoke", "--out", str(out), "--per-task", str(PER_TASK), "--slots", "2",
            "--no-progress"]
    # the stop lands while XLA compiles: with the suite's compilation cache off
    env = {**os.environ, "MLDS_JAX_COMPILE_CACHE": "0"} if when == "compile" else None
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        if when == "compile":  # the store exists and XLA compiles the first step
            first = proc.stdout.readline()
            assert "training" in first, first
            time.sleep(0.3)
        else:
            deadline = time.time() + 300
            while _stored(out) < 2 and proc.poll() is None and time.time() < deadline:
                time.sleep(0.1)
        assert proc.poll() is None, "the run finished before it could be stopped"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert "Traceback" not in err and "Aborted" not in err, err
    last = err.strip().splitlines()[-1]
    stored = _stored(out)
    assert last == (f"stopped by {signal.Signals(sig).name}: {stored} of {N} nets are in {out}; "
                    f"rerun the same command to resume"), err
    assert stored < N
    again = mlds(*args)
    assert f"training {N - stored} nets" in again.stdout
    assert_same_as(out, reference)


# ---- absurd input, full disk, read-only store ---------------------------------------------


def test_a_tier_this_machine_cannot_hold_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "huge.zarr"
    line = one_line_error(mlds("generate", "smoke", "--out", out, "--per-task", 10**10,
                               check=False))
    assert line.startswith("error: 50,000,000,000 nets cannot be made here: their rows need "), line
    assert "of disk" in line and "of memory" in line and "smaller --per-task" in line
    assert not out.exists() and not list(tmp_path.iterdir())


def _namespace_script(tmp_path, body: str) -> subprocess.CompletedProcess:
    """Run `body` (sh) as root of a private mount namespace with a tmpfs at $MNT."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to mount a private tmpfs")
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            f"mount -t tmpfs -o size=1m tmpfs {tmp_path}"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"cannot mount a tmpfs in a private namespace: {probe.stderr.decode()[:80]}")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "script.sh"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "MNT": str(mnt), "PY": sys.executable, "SRC": str(tmp_path)}
    return subprocess.run(["unshare", "-rm", "sh", "-e", str(script)], capture_output=True,
                          text=True, timeout=600, env=env)


def test_disk_full_mid_run_says_one_line_and_keeps_what_is_stored(tmp_path, reference):
    # Preflight passes on a 2 MB tmpfs (10 smoke nets need ~0.4 MB); a filler then takes
    # the rest of it once two nets are stored, so a later write fails mid-run.
    proc = _namespace_script(tmp_path, """
        mount -t tmpfs -o size=2m tmpfs "$MNT"
        S="$MNT/s.zarr"
        "$PY" -m mlds_jax.cli generate smoke --out "$S" --per-task 2 --slots 2 --no-progress \
            >"$SRC/out1" 2>"$SRC/err1" &
        pid=$!
        i=0
        while [ ! -e "$S/status/c/0" ] && [ $i -lt 3000 ]; do sleep 0.1; i=$((i+1)); done
        dd if=/dev/zero of="$MNT/filler" bs=4k 2>/dev/null || true
        rc=0; wait $pid || rc=$?
        echo "$rc" > "$SRC/rc1"
        rm "$MNT/filler"
        "$PY" -m mlds_jax.cli generate smoke --out "$S" --per-task 2 --slots 2 --no-progress \
            >"$SRC/out2" 2>"$SRC/err2"
        cp -r "$S" "$SRC/final.zarr"
    """)
    assert proc.returncode == 0, proc.stderr
    err1 = (tmp_path / "err1").read_text()
    assert (tmp_path / "rc1").read_text().strip() == "1", err1
    assert "Traceback" not in err1, err1
    line = err1.strip().splitlines()[-1]
    assert line.startswith(f"error: disk full writing to {tmp_path / 'mnt' / 's.zarr'}"), err1
    assert "need about" in line and "free space and rerun the same command" in line, line
    assert "resuming:" in (tmp_path / "out2").read_text()
    assert_same_as(tmp_path / "final.zarr", reference)


def test_a_read_only_store_is_refused_before_training(tmp_path):
    src = tmp_path / "src.zarr"
    build_store(src, n_nets=10, written=range(6))  # smoke recipe, cap 40: 4 nets pending
    proc = _namespace_script(tmp_path, """
        mount -t tmpfs -o size=4m tmpfs "$MNT"
        cp -r "$SRC/src.zarr" "$MNT/s.zarr"
        mount -o remount,ro "$MNT"
        rc=0
        "$PY" -m mlds_jax.cli generate smoke --out "$MNT/s.zarr" --per-task 2 \
            --set recipe.max_epochs=40 --no-progress >"$SRC/out" 2>"$SRC/err" || rc=$?
        echo "$rc" > "$SRC/rc"
    """)
    assert proc.returncode == 0, proc.stderr
    err = (tmp_path / "err").read_text()
    assert (tmp_path / "rc").read_text().strip() == "1", err
    assert "Traceback" not in err and "training" not in (tmp_path / "out").read_text()
    assert err.strip() == (f"error: store at {tmp_path / 'mnt' / 's.zarr'} is not writable: "
                           f"cannot create a file in {tmp_path / 'mnt' / 's.zarr'} "
                           f"(Read-only file system)"), err


# ---- damaged stores: info names the rows, generate retrains them ---------------------------


def _chunk(out, name, k):
    return out / name / "c" / str(k) / ("0" if name != "status" else "")


def test_deleted_weights_chunk_is_retrained(unpacked, reference):
    (unpacked / "weights" / "c" / "1" / "0").unlink()  # nets 4..7
    assert not verify(unpacked).ok
    run = mlds("generate", "smoke", "--out", unpacked, "--per-task", PER_TASK, "--no-progress")
    assert "retraining 4 damaged nets: weights: net 4 " in run.stderr, run.stderr
    assert "training 4 nets" in run.stdout
    assert_same_as(unpacked, reference)


def test_truncated_weights_chunk_is_retrained(unpacked, reference):
    chunk = unpacked / "initial_weights" / "c" / "2" / "0"  # nets 8, 9
    chunk.write_bytes(chunk.read_bytes()[:1000])
    run = mlds("generate", "smoke", "--out", unpacked, "--per-task", PER_TASK, "--no-progress")
    assert "retraining 2 damaged nets: initial_weights: nets 8..9 (chunk 2) unreadable" \
        in run.stderr, run.stderr
    assert_same_as(unpacked, reference)


def test_garbage_status_is_named_by_info_and_retrained_by_generate(reference, tmp_path):
    out = tmp_path / "garbage.zarr"
    shutil.copytree(reference, out)  # packed: repair unpacks, retrains, packs again
    chunk = out / "status" / "c" / "0"
    chunk.write_bytes(b"\x17" * len(chunk.read_bytes()))
    line = one_line_error(mlds("info", out, check=False))
    assert line.startswith(f"error: store at {out} is damaged: status of nets 0..3 (chunk 0) "
                           f"is unreadable"), line
    run = mlds("generate", "smoke", "--out", out, "--per-task", PER_TASK, "--no-progress")
    assert "retraining 4 damaged nets: status: nets 0..3 (chunk 0) unreadable: checksum " \
           "mismatch" in run.stderr, run.stderr
    assert_same_as(out, reference)
    assert mlds_jax.open_dataset(out).store.packed


def test_verify_checks_every_shape_against_the_others_and_the_attrs(reference, tmp_path):
    out = tmp_path / "resized.zarr"
    shutil.copytree(reference, out)
    meta = out / "status" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"] = [8]
    meta.write_text(json.dumps(doc))
    proc = mlds("verify", out, check=False)
    assert proc.returncode == 1
    assert ("status has 8 rows but weights, initial_weights, task, seed, epochs, loss_curve, "
            "val_accuracy, hyperparameters, seq_steps, checksums/rows have 10") in proc.stdout, proc.stdout


# ---- killed (un)packs, leftovers, readers -------------------------------------------------

_KILL_AT_RENAME = """
import os, signal, sys
from mlds_jax.store import rawrows
real, calls = os.rename, []
def rename(a, b):
    real(a, b)
    calls.append(a)
    if len(calls) == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
rawrows.os.rename = rename
rawrows.pack(sys.argv[1], unpack=sys.argv[3] == "unpack")
"""


@pytest.mark.parametrize("renames", [1, 2])
def test_killed_unpack_is_finished_by_the_first_rerun(reference, tmp_path, renames):
    """SIGKILL between the two renames of unpacking `weights` (1), or after both, before the
    old copy is deleted (2); then a larger tier. The first rerun extends the store."""
    out = tmp_path / "unpacking.zarr"
    shutil.copytree(reference, out)
    killed = subprocess.run([sys.executable, "-c", _KILL_AT_RENAME, str(out), str(renames),
                             "unpack"], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert (out / ".weights.old").is_dir()
    if renames == 2:  # the store reads fine, but a full copy of the weights is left over
        report = verify(out)
        assert report.ok and report.strays == [str(out / ".weights.old")], report.strays
    run = mlds("generate", "smoke", "--out", out, "--per-task", PER_TASK + 1, "--no-progress")
    assert f"resuming: {N} of {N + 5} nets" in run.stdout
    assert not (out / ".weights.old").exists() and not (out / ".weights.new").exists()
    before, after = read_all(reference), read_all(out)
    for name in ROW_ARRAYS:
        np.testing.assert_array_equal(after[name][:N], before[name], err_msg=name)
    assert verify(out).ok and (read_all(out)["status"] > 0).all()


def test_a_dead_creators_folder_is_reported_and_then_removed(tmp_path):
    out = tmp_path / "fresh.zarr"
    build_store(out, n_nets=10, written=range(10))
    dead = tmp_path / f".fresh.zarr.creating-{os.uname().nodename}-999999999-0123abcd"
    dead.mkdir()
    live = tmp_path / f".fresh.zarr.creating-{os.uname().nodename}-{os.getpid()}-0123abcd"
    live.mkdir()
    report = verify(out)
    assert report.ok and report.strays == [str(dead)]
    assert "1 stray files" in report.summary()
    gen.open_store(load_config("smoke", ["recipe.max_epochs=40"]), tmp_path / "other.zarr", 5)
    assert dead.exists()  # another store's run leaves it alone
    gen.open_store(load_config("smoke", ["recipe.max_epochs=40"]), out, 10)
    assert not dead.exists() and live.exists()
    assert verify(out).strays == []


def test_a_reader_opened_before_the_final_pack_keeps_reading_the_same_weights(unpacked):
    ds = mlds_jax.open_dataset(unpacked)
    before = ds.load_weights()
    first = ds.load_weights([3], initial=True)
    assert np.isfinite(before).all()
    pack(unpacked)  # what generate does once the store is complete
    np.testing.assert_array_equal(ds.load_weights(), before)
    np.testing.assert_array_equal(ds.load_weights([3], initial=True), first)
    np.testing.assert_array_equal(np.asarray(ds.weights[:]), before)
    np.testing.assert_array_equal(ds.weights_memmap(), before)


# ---- checkpoints: nets in flight survive SIGKILL and SIGTERM ------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_nets_in_flight_resume_from_their_checkpoint(tmp_path, reference, sig):
    """Checkpoints every step (SIGKILL: the last one is used) or only the one SIGTERM asks
    for; the rerun goes on from the saved epochs and ends equal to an uninterrupted run.
    3 slots, so nets start at different steps and some are in flight at any stop."""
    out = tmp_path / "preempted.zarr"
    minutes = "0.0001" if sig == signal.SIGKILL else "1000"
    args = ["generate", "smoke", "--out", str(out), "--per-task", str(PER_TASK), "--slots", "3",
            "--no-progress", "--set", f"run.checkpoint_minutes={minutes}"]
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    meta = None
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            if sig == signal.SIGTERM:
                if _stored(out) >= 2:
                    break
            else:
                for path in out.glob("checkpoints/*/meta.json"):
                    doc = json.loads(path.read_text())
                    if max(doc["epochs"]) >= 4:
                        meta = doc
                if meta:
                    break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be stopped"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and "Traceback" not in err, err
        saved = list(out.glob("checkpoints/*/meta.json"))  # written on the way out
        if not saved:  # stopped between a harvest and a refill: nothing was in flight
            assert "stopped by SIGTERM" in err
            mlds(*args)
            assert_same_as(out, reference)
            return
        meta = json.loads(saved[0].read_text())
    in_flight = [n for n in meta["slot_net"] if n >= 0]
    assert in_flight and min(e for n, e in zip(meta["slot_net"], meta["epochs"])
                             if n >= 0) > 0  # mid-training, not at epoch 0
    status = mlds_jax.open_dataset(out).store.read_array("status")
    assert (status[in_flight] == 0).all()
    again = mlds(*args)
    assert f"resuming {len(in_flight)} nets from a checkpoint at epochs " in again.stderr, \
        again.stderr
    assert f"training {N - int((status > 0).sum())} nets" in again.stdout
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    assert_same_as(out, reference)


def test_a_checkpoint_of_another_package_version_is_ignored_with_a_line(tmp_path, reference):
    out = tmp_path / "old.zarr"
    shutil.copytree(reference, out)
    pack(out, unpack=True)
    ds = mlds_jax.open_dataset(out)
    ds.store  # noqa: B018
    from mlds_jax.store.dataset_store import DatasetStore

    DatasetStore.open(out, mode="r+").reset_rows([0, 1])
    ckpt = out / "checkpoints" / "elsewhere_1_x"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text(json.dumps({
        "owner": "elsewhere:1:x", "config": load_config("smoke").identity(),
        "package_version": "0.0.1", "state": "1", "slot_net": [0, 1], "epochs": [4, 4]}))
    run = mlds("generate", "smoke", "--out", out, "--per-task", PER_TASK, "--no-progress")
    assert (f"ignoring the checkpoint in {ckpt}: written by mlds_jax 0.0.1, this is "
            f"{mlds_jax.__version__}") in run.stderr, run.stderr
    assert "training 2 nets" in run.stdout and not ckpt.exists()
    assert_same_as(out, reference)


# ---- runs as a user types them: from the repository root, relative paths -------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def relative_out():
    """A store path relative to the repository root (under the git-ignored out/), removed
    after the test: what `--out ds1.zarr` typed at the root gives the program."""
    import uuid

    rel = Path("out") / f".test-{uuid.uuid4().hex[:8]}"
    yield rel / "run.zarr"
    shutil.rmtree(REPO / rel, ignore_errors=True)


def test_a_relative_out_lives_through_checkpoints_a_sigterm_and_the_resume(relative_out,
                                                                           reference):
    """Issue 20, findings 1 and 2: orbax refused the relative checkpoint path at the first
    save (a traceback at minute five of every README-style run) and at a SIGTERM's save.
    A checkpoint every step, several of them saved, then SIGTERM: the usual line, 143;
    the same command resumes the nets in flight and ends equal to an uninterrupted run."""
    args = ["generate", "smoke", "--out", str(relative_out), "--per-task", str(PER_TASK),
            "--slots", "3", "--no-progress", "--set", "run.checkpoint_minutes=0.0001"]
    out = REPO / relative_out
    proc = subprocess.Popen([*CLI, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline, saved = time.time() + 300, 0
        while proc.poll() is None and time.time() < deadline:
            metas = list(out.glob("checkpoints/*/meta.json"))
            if metas:
                try:
                    saved = max(json.loads(metas[0].read_text())["epochs"])
                except (OSError, ValueError):
                    pass
            if saved >= 4:  # checkpoints at epochs 2 and 4 at least: several intervals
                break
            time.sleep(0.02)
        assert proc.poll() is None, ("the run ended before it could be stopped",
                                     proc.communicate())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and "Traceback" not in err, err
    stored = _stored(out)
    assert err.strip().splitlines()[-1] == (f"stopped by SIGTERM: {stored} of {N} nets are in "
                                            f"{relative_out}; rerun the same command to resume")
    again = mlds(*args, cwd=REPO)
    assert "resuming" in again.stderr and "from a checkpoint" in again.stderr, again.stderr
    assert f"done: {N} nets in {relative_out}" in again.stdout
    assert_same_as(out, reference)


def test_restarted_nets_resume_from_a_checkpoint_with_their_restart_count(relative_out,
                                                                         tmp_path):
    """recipe.restart_epochs = 4 on the smoke tier (cap 10): a net still running at epoch 4
    starts again (not at 8: no window left before the cap). A checkpoint every step, SIGKILL
    once some net in flight has passed its restart, then the same command: the store equals
    an uninterrupted run with the same recipe, restart counts (per_net/restarts and the
    metadata frame) included, and every count is what the rule gives its epochs."""
    restart = ["--set", "recipe.restart_epochs=4"]
    reference = tmp_path / "ref.zarr"
    # The same slots as the run below, so that it loads the steps this one compiled.
    gen.generate(load_config("smoke", ["recipe.restart_epochs=4", "run.slots=3"]), reference,
                 PER_TASK)
    args = ["generate", "smoke", "--out", str(relative_out), "--per-task", str(PER_TASK),
            "--slots", "3", "--no-progress", "--set", "run.checkpoint_minutes=0.0001", *restart]
    out = REPO / relative_out
    proc = subprocess.Popen([*CLI, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline, past = time.time() + 300, False
        while proc.poll() is None and time.time() < deadline and not past:
            for path in out.glob("checkpoints/*/meta.json"):
                try:
                    past = max(json.loads(path.read_text())["epochs"]) >= 6
                except (OSError, ValueError):
                    pass
            time.sleep(0.02)
        assert proc.poll() is None, ("the run ended before it could be stopped",
                                     proc.communicate())
        proc.kill()
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    again = mlds(*args, cwd=REPO)
    assert "resuming" in again.stderr and "from a checkpoint" in again.stderr, again.stderr
    assert_same_as(out, reference)
    got, ref = mlds_jax.open_dataset(out), mlds_jax.open_dataset(reference)
    restarts = got.store.read_per_net("restarts")
    np.testing.assert_array_equal(restarts, ref.store.read_per_net("restarts"))
    epochs = np.asarray(got.epochs[:])
    np.testing.assert_array_equal(restarts, (epochs > 4).astype(np.int32))
    assert (restarts == 1).any()
    np.testing.assert_array_equal(got.metadata()["restarts"].to_numpy(), restarts)


def test_an_interrupted_checkpoints_leftovers_are_listed_then_removed(unpacked, reference):
    """orbax writes a state to `<name>.orbax-checkpoint-tmp*` and renames it when whole: a
    writer killed mid-save leaves that folder (and, in its first save, a folder with no
    meta.json). verify lists them; the next run removes those of writers that are gone."""
    import socket

    dead = subprocess.Popen(["true"])  # a pid whose process is gone
    dead.wait()
    owner_dir = unpacked / "checkpoints" / f"{socket.gethostname()}_{dead.pid}_deadbeef"
    tmp = owner_dir / "1796458040678393516.orbax-checkpoint-tmp"
    (tmp / "d").mkdir(parents=True)
    (tmp / "d" / "x").write_bytes(b"half a state")
    live_dir = unpacked / "checkpoints" / f"{socket.gethostname()}_{os.getpid()}_cafe"
    live_tmp = live_dir / "1.orbax-checkpoint-tmp-17"  # a save in progress: not touched
    live_tmp.mkdir(parents=True)
    report = verify(unpacked)
    assert report.ok and {str(tmp), str(live_tmp)} <= set(report.strays), report.strays
    gen.generate(load_config("smoke"), unpacked, PER_TASK)
    assert not owner_dir.exists() and live_tmp.is_dir()
    shutil.rmtree(live_dir)
    assert_same_as(unpacked, reference)


def _children(pid: int, name: str) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children()
            if any(name in part for part in p.cmdline())]


def test_a_ray_run_stops_in_one_line_on_sigterm_and_when_its_raylet_dies(relative_out,
                                                                          reference):
    """Issue 20, findings 3 and 4: SIGTERM to the driver printed Ray's C++ signal dump;
    a killed raylet left the driver waiting for ever at 0/N. Now: the local run's stop line
    and 143; one `error:` line and exit 1 within a minute of the raylet's death; nothing
    of Ray's on the terminal either time; the same command then finishes the store."""
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    args = ["generate", "smoke", "--out", str(relative_out), "--per-task", str(PER_TASK),
            "--engine", "ray", "--workers", "2", "--slots", "2", "--no-progress"]
    out = REPO / relative_out
    ours = ("ds1-smoke: training", "resuming:", "done:")

    def owners() -> set[str]:
        found = set()
        for lease in out.glob("leases/chunk-*.json"):
            try:
                found.add(json.loads(lease.read_text())["owner"])
            except (OSError, ValueError):
                pass
        return found

    def run_until_leased(act):
        """Run the command; once one of its workers holds a chunk, `act` on it."""
        before = owners()
        proc = subprocess.Popen([*CLI, *args], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 300
            while not owners() - before and time.time() < deadline:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.1)
            t0 = time.time()
            act(proc)
            stdout, stderr = proc.communicate(timeout=120)
            return proc.returncode, time.time() - t0, stdout, stderr
        finally:
            if proc.poll() is None:
                proc.kill()

    rc, _, stdout, stderr = run_until_leased(lambda p: p.send_signal(signal.SIGTERM))
    assert rc == 143, (stdout, stderr)
    assert all(line.startswith(ours) for line in stdout.splitlines()), stdout
    assert stderr.splitlines() == [f"stopped by SIGTERM: {_stored(out)} of {N} nets are in "
                                   f"{relative_out}; rerun the same command to resume"], stderr

    def kill_raylet(proc):
        (raylet,) = _children(proc.pid, "raylet/raylet")
        os.kill(raylet, signal.SIGKILL)

    rc, seconds, stdout, stderr = run_until_leased(kill_raylet)
    assert rc == 1 and seconds < 60, (rc, seconds, stderr)
    assert all(line.startswith(ours) for line in stdout.splitlines()), stdout
    (line,) = stderr.splitlines()
    assert line.startswith("error: the Ray node on this machine died (its raylet exited") \
        and "rerun the same command to resume" in line, line
    log = line.rsplit("(Ray's own output: ", 1)[1].rstrip(")")
    Path(log).unlink()

    again = mlds(*args, cwd=REPO)
    assert f"done: {N} nets in {relative_out}" in again.stdout, again.stderr
    assert not again.stderr.strip(), again.stderr
    assert_same_as(out, reference)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop itself
def test_a_stop_swallowed_by_a_gc_callback_is_raised_at_the_next_check():
    """Python may run the signal handler inside a garbage-collection callback, which prints
    "Exception ignored" and drops the exception (seen in CI: JAX's `_xla_gc_callback` took a
    SIGINT that landed mid-compile, and the run finished with exit 0). The stop must survive
    to the run's next check between steps."""
    import gc

    from mlds_jax.signals import Interrupted, stop_signals

    def signal_lands_here(phase, info):
        if phase == "start":
            stop_signals._handler(signal.SIGINT, None)  # as Python runs it: raises here

    with pytest.raises(Interrupted) as stop:
        with stop_signals.installed():
            gc.callbacks.append(signal_lands_here)
            try:
                gc.collect()  # the handler's Interrupted is printed and dropped
            finally:
                gc.callbacks.remove(signal_lands_here)
            stop_signals.check()  # the run's next step
    assert stop.value.exit_code == 128 + signal.SIGINT
    with stop_signals.installed():
        stop_signals.check()  # a new run starts without the old stop
