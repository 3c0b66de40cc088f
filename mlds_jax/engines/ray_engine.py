"""`mlds generate ... --engine ray`: one long-lived Ray actor per worker (a GPU, or some CPUs
of a node) runs the ordinary generator against the shared store, so the store, not Ray,
guarantees that no net is lost or trained twice: each worker claims chunks under leases,
writes its rows straight into the store (a POSIX file system every node mounts), waits for
the others' chunks and takes over those of a worker that died once its lease expires.

The driver makes (or extends) the store, starts the workers, shows one progress bar read
from the store itself, and replaces a worker that died (up to `max_restarts` times), so a
run ends with every net stored unless every worker keeps failing. Needs
`pip install 'mlds-jax[ray]'`.

The driver also watches the cluster itself: a Ray node that dies (OOM, preemption, a killed
raylet) leaves actors that can never be placed and a `ray.wait` that never returns
anything, so the run stops with one line (`EngineError`) when the node it started has lost
its raylet or GCS, when a joined cluster has no live node, or when no worker has renewed a
lease or stored a net for `_stall_seconds`. The store keeps what is finished; the same
command resumes.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from mlds_jax import generate as gen
from mlds_jax.config.dataset import DatasetConfig
from mlds_jax.signals import stop_signals
from mlds_jax.store.dataset_store import DatasetStore
from mlds_jax.store.leases import LEASES
from mlds_jax.store.schema import StoreError


class EngineError(StoreError):
    """The engine cannot run (Ray missing, workers failing): one line for the CLI."""


class _Worker:
    """One writer: trains whatever is left of the tier, as `mlds generate` would."""

    def train(self, cfg: DatasetConfig, out: str, per_task: int) -> dict:
        import os
        import socket

        report = gen.generate(cfg, out, per_task)
        return {"trained": report.trained, "taken_over": report.taken_over,
                "host": socket.gethostname(), "pid": os.getpid()}


def generate_on_ray(cfg: DatasetConfig, out: str | Path, per_task: int, *,
                    address: str | None = None, workers: int | None = None,
                    worker_cpus: float = 1.0, worker_gpus: float = 0.0,
                    max_restarts: int = 3, overwrite: bool = False,
                    on_start: Callable[[int, int, int], None] | None = None,
                    on_progress: Callable[[int], None] | None = None,
                    on_note: Callable[[str], None] | None = None) -> gen.RunReport:
    """Fill the store at `out` with the tier of `per_task` nets per task on a Ray cluster
    (`address`: "auto" or "ray://..." to join one; None starts one on this machine).
    `on_start(total, already_stored, workers)`; `on_progress(stored)` as rows land."""
    try:
        import ray
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError
    except ImportError:
        raise EngineError("--engine ray needs Ray: pip install 'mlds-jax[ray]'") from None
    t0 = time.perf_counter()
    total = cfg.num_tasks * per_task
    gen.preflight(cfg, out, total, overwrite)
    gen.prepare_store(cfg, out, total, overwrite)
    shown = out
    out = str(Path(out).absolute())  # workers have their own working directories
    already = total - len(DatasetStore.open(out, mode="r").pending(total))

    started_here = not ray.is_initialized() and address is None
    if not ray.is_initialized():
        with warnings.catch_warnings():
            # Ray starts its processes with fork + exec; JAX's warning about forking a
            # multithreaded process concerns a fork that goes on running Python.
            warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        # ray.init replaces the SIGTERM handler (and its core worker installs a C++ one that
        # dumps a stack): a stop is ours to handle, between writes, as in a local run.
        stop_signals.reclaim()
    watch = _Watch(ray, out, total, started_here, _stall_seconds(cfg))
    # A stop raised inside a Ray call comes out of it as a SystemError: signals are held
    # while Ray runs and acted on between calls (at most a second late, ray.wait's timeout).
    try:
        with stop_signals.deferred():
            n = workers or max(1, int(ray.cluster_resources().get(
                "GPU" if worker_gpus else "CPU", 1) // (worker_gpus or worker_cpus)))
            actor = ray.remote(num_cpus=worker_cpus, num_gpus=worker_gpus)(_Worker)
            if on_start:
                on_start(total, already, n)
            running = {}
            for _ in range(n):
                a = actor.remote()
                running[a.train.remote(cfg, out, per_task)] = a
        restarts, trained, taken_over = 0, 0, 0
        while running:
            with stop_signals.deferred():
                ready, _ = ray.wait(list(running), timeout=1.0)
            stored = total - len(DatasetStore.open(out, mode="r").pending(total))
            if on_progress:
                on_progress(stored)
            problem = watch.problem(stored)  # before a dead node's workers are replaced
            if problem:
                raise EngineError(f"{problem}; {stored} of {total} nets are in {shown}; "
                                  f"rerun the same command to resume")
            for ref in ready:
                running.pop(ref)
                with stop_signals.deferred():
                    try:
                        result = ray.get(ref)
                    except RayTaskError as e:  # the generator raised: the user's to fix
                        cause = e.as_instanceof_cause()
                        raise EngineError(f"a worker failed: "
                                          f"{str(cause).splitlines()[-1]}") from e
                    except (RayActorError, WorkerCrashedError):
                        result = None
                if result is None:
                    if restarts >= max_restarts:
                        raise EngineError(f"{restarts + 1} workers died; giving up (rerun the "
                                          f"same command to go on)") from None
                    restarts += 1
                    if on_note:
                        on_note(f"a worker died; starting another ({restarts} of "
                                f"{max_restarts}); its chunks are taken over once their "
                                f"leases expire ({cfg.run.lease_seconds:g} s)")
                    with stop_signals.deferred():
                        a = actor.remote()
                        running[a.train.remote(cfg, out, per_task)] = a
                    continue
                trained += result["trained"]
                taken_over += result["taken_over"]
    finally:
        if started_here:
            with stop_signals.deferred():
                ray.shutdown()
    store = DatasetStore.open(out, mode="r")
    left = len(store.pending(total))
    if left:
        raise EngineError(f"{left} nets are still pending after every worker finished; rerun "
                          f"the same command")
    return gen.RunReport(total, already, trained, n, time.perf_counter() - t0,
                         taken_over=taken_over)


def _stall_seconds(cfg: DatasetConfig) -> float:
    """How long the driver waits for any sign of a working worker (a lease renewed, a net
    stored) before it calls the run stuck: two lease lifetimes (a live writer renews each
    of its leases every quarter lifetime, whatever its training step costs), and at least
    a minute and a half for workers to start and compile."""
    return max(90.0, 2 * cfg.run.lease_seconds)


class _Watch:
    """Whether the Ray cluster can still finish the run: the processes of a node started
    here, the live nodes of a joined cluster, and the workers' signs of life in the store
    (lease files rewritten, rows stored)."""

    def __init__(self, ray, out: str, total: int, started_here: bool, stall_seconds: float):
        self.ray = ray
        self.leases = Path(out) / LEASES
        self.started_here = started_here
        self.stall_seconds = stall_seconds
        self.last_sign = self.last_nodes = time.monotonic()
        self.seen: tuple = ()

    def problem(self, stored: int) -> str:
        now = time.monotonic()
        if self.started_here:
            dead = self._dead_local()
            if dead:
                return f"the Ray node on this machine died ({dead})"
        elif now - self.last_nodes >= 5.0:
            self.last_nodes = now
            try:
                alive = [n for n in self.ray.nodes() if n.get("Alive")]
            except Exception:  # noqa: BLE001 - the GCS itself is unreachable
                alive = []
            if not alive:
                return "the Ray cluster has no live node"
        signs = (stored, self._lease_stamps())
        if signs != self.seen:
            self.seen, self.last_sign = signs, now
        elif now - self.last_sign >= self.stall_seconds:
            return (f"no Ray worker renewed a lease or stored a net for "
                    f"{self.stall_seconds:.0f} s (workers that cannot be placed, or a node "
                    f"that is gone)")
        return ""

    def _dead_local(self) -> str:
        node = getattr(self.ray._private.worker, "_global_node", None)
        if node is None:
            return ""
        for kind, process in node.dead_processes():
            if kind in ("raylet", "gcs_server"):
                return f"its {kind} exited with status {process.poll()}"
        return ""

    def _lease_stamps(self) -> tuple:
        try:
            return tuple(sorted((p.name, p.stat().st_mtime_ns)
                                for p in self.leases.glob("chunk-*.json")))
        except OSError:  # a lease replaced while listed: the next look sees it
            return ()


class ray_output_to_log:
    """Ray prints to the terminal from its C++ core (stack dumps, 'Token authentication is
    enabled') and from Python threads (a dead raylet's log tail): within the block file
    descriptors 1 and 2 go to a log file, and the run writes its own lines to the streams it
    is given, which stay on the terminal. MLDS_VERBOSE=1 leaves Ray's output on the
    terminal."""

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        if os.environ.get("MLDS_VERBOSE"):
            self.saved = None
            return sys.stdout, sys.stderr, None
        fd, self.log = tempfile.mkstemp(prefix="mlds-ray-", suffix=".log")
        self.saved = (os.dup(1), os.dup(2))
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        self.term = (open(self.saved[0], "w", buffering=1, closefd=False),
                     open(self.saved[1], "w", buffering=1, closefd=False))
        return (*self.term, self.log)

    def __exit__(self, *exc):
        if self.saved is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        for stream in self.term:
            stream.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        for fd in self.saved:
            os.close(fd)
        if exc[0] is None:
            os.unlink(self.log)  # a run that finished: nothing in it anyone needs
