"""`mlds generate ... --engine ray`: one long-lived Ray actor per worker (a GPU, or some CPUs
of a node) runs the ordinary generator against the shared store, so the store, not Ray,
guarantees that no net is lost or trained twice: each worker claims chunks under leases,
writes its rows straight into the store (a POSIX file system every node mounts), waits for
the others' chunks and takes over those of a worker that died once its lease expires.

The driver makes (or extends) the store, starts the workers, shows one progress bar read
from the store itself, and replaces a worker that died (up to `max_restarts` times), so a
run ends with every net stored unless every worker keeps failing. Needs
`pip install 'mlds-jax[ray]'`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path

from mlds_jax import generate as gen
from mlds_jax.config import DatasetConfig
from mlds_jax.store import DatasetStore, StoreError


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
    out = str(Path(out).absolute())
    already = total - len(DatasetStore.open(out, mode="r").pending(total))

    started_here = not ray.is_initialized() and address is None
    if not ray.is_initialized():
        with warnings.catch_warnings():
            # Ray starts its processes with fork + exec; JAX's warning about forking a
            # multithreaded process concerns a fork that goes on running Python.
            warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
    try:
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
            ready, _ = ray.wait(list(running), timeout=1.0)
            if on_progress:
                on_progress(total - len(DatasetStore.open(out, mode="r").pending(total)))
            for ref in ready:
                running.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError as e:  # the generator raised: the user's to fix
                    cause = e.as_instanceof_cause()
                    raise EngineError(f"a worker failed: {str(cause).splitlines()[-1]}") from e
                except (RayActorError, WorkerCrashedError):
                    if restarts >= max_restarts:
                        raise EngineError(f"{restarts + 1} workers died; giving up (rerun the "
                                          f"same command to go on)") from None
                    restarts += 1
                    if on_note:
                        on_note(f"a worker died; starting another ({restarts} of "
                                f"{max_restarts}); its chunks are taken over once their "
                                f"leases expire ({cfg.run.lease_seconds:g} s)")
                    a = actor.remote()
                    running[a.train.remote(cfg, out, per_task)] = a
                    continue
                trained += result["trained"]
                taken_over += result["taken_over"]
    finally:
        if started_here:
            ray.shutdown()
    store = DatasetStore.open(out, mode="r")
    left = len(store.pending(total))
    if left:
        raise EngineError(f"{left} nets are still pending after every worker finished; rerun "
                          f"the same command")
    return gen.RunReport(total, already, trained, n, time.perf_counter() - t0,
                         taken_over=taken_over)
