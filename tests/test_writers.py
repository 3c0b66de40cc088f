"""Many writers on one store: runs started together share the work chunk by chunk and never
write a net twice; a dead writer's lease is taken over after it expires; `--ids` trains one
chunk-aligned range (job arrays). Each ends in a store equal to one uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import mlds_jax
from mlds_jax import generate as gen
from mlds_jax.config.load import load_config
from mlds_jax.store.leases import Claims, Leases

from .stores import assert_same_as, read_all

PER_TASK = 4  # smoke: 20 nets in 5 chunks of 4
N = 5 * PER_TASK


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    gen.generate(load_config("smoke"), out, PER_TASK)
    return out


def test_two_runs_started_together_share_the_work(tmp_path, reference):
    out = tmp_path / "shared.zarr"
    args = [sys.executable, "-m", "mlds_jax.cli", "generate", "smoke", "--out", str(out),
            "--per-task", str(PER_TASK), "--slots", "4", "--no-progress"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr
        assert "Traceback" not in stderr
    trained = [int(stdout.split("(")[-1].split(" trained now")[0]) for stdout, _ in outs]
    assert sum(trained) == N, outs  # every net trained by exactly one of them
    assert_same_as(out, reference)
    assert mlds_jax.open_dataset(out).store.packed  # the one that finished last packed it
    assert not list((out / "leases").glob("chunk-*.json"))


def test_a_dead_writers_lease_is_taken_over_after_it_expires(tmp_path, reference):
    out = tmp_path / "orphan.zarr"
    cfg = load_config("smoke", ["run.lease_seconds=1"])
    gen.open_store(cfg, out, N)
    dead = Leases(out, seconds=6, owner="elsewhere:1:dead")
    with dead.locked():
        assert dead.claim([2]) == 2  # nets 8..11, never renewed: the writer is gone
    expiry = time.time() + 6
    written = []
    report = gen.generate(cfg, out, PER_TASK,
                          on_progress=lambda done: written.append((time.time(), done.net_id)))
    assert report.taken_over == 1 and report.trained == N and report.dropped == 0
    chunk2 = [t for t, ids in written if (ids // 4 == 2).any()]
    assert chunk2 and min(chunk2) >= expiry  # untouched while the lease was live
    assert_same_as(out, reference)


def test_nets_of_a_lost_lease_are_not_written(tmp_path, monkeypatch):
    """A writer stalled past its lease's expiry, whose chunk another writer took over,
    drops those nets instead of writing into the other's chunk, and waits for it."""
    out = tmp_path / "stolen.zarr"
    cfg = load_config("smoke")
    gen.open_store(cfg, out, N)
    real_still_held = Claims.still_held
    stolen = []

    def steal_first(self, net_ids):
        if not stolen:
            chunk = int(net_ids[0]) // 4
            lease = out / "leases" / f"chunk-{chunk}.json"
            lease.write_text(json.dumps({"owner": "elsewhere:2:thief",
                                         "expires": time.time() + 600}))
            stolen.append((chunk, [int(n) for n in net_ids if n // 4 == chunk]))
        return real_still_held(self, net_ids)

    class Waited(Exception):
        pass

    def on_wait(n):
        raise Waited(n)

    monkeypatch.setattr(Claims, "still_held", steal_first)
    with pytest.raises(Waited):
        gen.generate(cfg, out, PER_TASK, on_wait=on_wait)
    chunk, lost = stolen[0]
    status = mlds_jax.open_dataset(out).store.read_array("status")
    assert lost and (status[lost] == 0).all()  # not written: the thief's now
    others = np.setdiff1d(np.arange(N), np.arange(chunk * 4, chunk * 4 + 4))
    assert (status[others] > 0).all()
    assert json.loads((out / "leases" / f"chunk-{chunk}.json").read_text())["owner"] == \
        "elsewhere:2:thief"  # released only by its owner


def test_ids_train_one_chunk_aligned_range(tmp_path, reference):
    out = tmp_path / "range.zarr"
    run = [sys.executable, "-m", "mlds_jax.cli", "generate", "smoke", "--out", str(out),
           "--per-task", str(PER_TASK), "--no-progress"]
    first = subprocess.run([*run, "--ids", "4:12"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "training 8 nets" in first.stdout
    status = mlds_jax.open_dataset(out).store.read_array("status")
    assert (status[4:12] > 0).all() and (status[:4] == 0).all() and (status[12:] == 0).all()
    bad = subprocess.run([*run, "--ids", "2:12"], capture_output=True, text=True)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("error: --ids 2:12 must start and end on multiples of the "
                                 "store's 4 rows per chunk"), bad.stderr
    rest = [subprocess.run([*run, "--ids", ids], capture_output=True, text=True)
            for ids in ("0:4", "12:1000")]
    assert all(r.returncode == 0 for r in rest), [r.stderr for r in rest]
    assert "training 8 nets" in rest[1].stdout  # 12..19: cut to the tier
    assert_same_as(out, reference)
    assert mlds_jax.open_dataset(out).store.packed


def test_ray_workers_share_the_tier_and_survive_a_killed_worker(tmp_path, reference):
    pytest.importorskip("ray")
    out = tmp_path / "ray.zarr"
    args = [sys.executable, "-m", "mlds_jax.cli", "generate", "smoke", "--out", str(out),
            "--per-task", str(PER_TASK), "--engine", "ray", "--workers", "2", "--slots", "2",
            "--set", "run.lease_seconds=4", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    try:
        deadline = time.time() + 400
        while killed is None and proc.poll() is None and time.time() < deadline:
            for lease in (out / "leases").glob("chunk-*.json"):
                try:
                    owner = json.loads(lease.read_text())["owner"]
                except (OSError, ValueError):
                    continue
                killed = int(owner.split(":")[1])  # a worker training its first chunk
                os.kill(killed, signal.SIGKILL)
                break
            time.sleep(0.1)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "no worker claimed a chunk"
    assert proc.returncode == 0, stderr
    assert "a worker died; starting another" in stderr and "Traceback" not in stderr, stderr
    assert f"done: {N} nets in {out}" in stdout
    assert_same_as(out, reference)
