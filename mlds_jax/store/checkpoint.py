"""Checkpoints of a writer's population (orbax-checkpoint), so that nets in flight survive a
preemption: parameters, optimiser state, epochs, loss curves and which net is in which slot.

A writer saves to ``<store>/checkpoints/<owner>/`` every ``run.checkpoint_minutes`` and when
it is sent SIGTERM: an orbax PyTree of the state's arrays in ``<k>/`` and ``meta.json`` (the
owner, the dataset's config, the package version, the slot table, the epochs), written after
the arrays and naming them, so a checkpoint is either whole or absent. Once every net is in
the store the writer deletes it.

A later run adopts a checkpoint whose writer is gone (no live lease; on this host, its
process has exited): under the writers' lock it takes over the writer's name and so its
leases, and its nets go on from the saved epochs. A checkpoint of another config or another
package version is removed with a line that says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from mlds_jax._version import __version__
from mlds_jax.store.leases import Leases, local_owner_alive

CHECKPOINTS = "checkpoints"  # the folder in a store
ORBAX_TMP = ".orbax-checkpoint-tmp"  # orbax's name for a state still being written


@dataclasses.dataclass
class Saved:
    """A checkpoint read back: the owner it belonged to, its state arrays (pytree order) and
    slot table (M,), net ids or -1."""

    owner: str
    leaves: list[np.ndarray]
    slot_net: np.ndarray
    epochs: np.ndarray  # (M,) epochs each slot had trained

    @property
    def nets(self) -> np.ndarray:
        return self.slot_net[self.slot_net >= 0]


class Checkpoints:
    """This writer's checkpoints in the store at ``path``."""

    def __init__(self, path, leases: Leases, identity: dict, minutes: float):
        # Absolute here, once: orbax (tensorstore) refuses a relative path, and a user's
        # `--out ds1.zarr` is one.
        self.root = Path(path).absolute() / CHECKPOINTS
        self.leases = leases
        self.identity = json.loads(json.dumps(identity))
        self.seconds = minutes * 60
        self.last = time.monotonic()
        self.saves = 0
        self.save_seconds = 0.0

    @property
    def dir(self) -> Path:
        return self.root / _safe(self.leases.owner)

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.seconds

    # ---- saving -------------------------------------------------------------------------

    def save(self, leaves: list[np.ndarray], slot_net: np.ndarray, epochs: np.ndarray) -> None:
        import orbax.checkpoint as ocp

        t0 = time.perf_counter()
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}"
        ocp.PyTreeCheckpointer().save(self.dir / name, {f"{i:05d}": a for i, a in
                                                         enumerate(leaves)})
        meta = {"owner": self.leases.owner, "config": self.identity,
                "package_version": __version__, "state": name,
                "slot_net": [int(n) for n in slot_net], "epochs": [int(e) for e in epochs],
                "saved": time.time()}
        tmp = self.dir / f".meta.{uuid.uuid4().hex[:8]}.partial"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.dir / "meta.json")
        for old in self.dir.iterdir():  # earlier states: no longer named by meta.json
            if old.is_dir() and old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        self.last = time.monotonic()
        self.saves += 1
        self.save_seconds += time.perf_counter() - t0

    def delete(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- adopting a dead writer's checkpoint ---------------------------------------------

    def adopt(self, on_note=None) -> Saved | None:
        """The checkpoint of a writer that is gone, now this writer's (its name and leases
        taken over), or None. Call under the writers' lock."""
        if not self.root.is_dir():
            return None
        live_owners = {lease.owner for lease in self.leases.all().values()
                       if lease.live(time.time())} - {self.leases.owner}
        self._remove_leftovers(live_owners)
        for d in sorted(self.root.iterdir()):
            meta = _read_meta(d)
            if meta is None or d == self.dir:
                continue
            owner = meta["owner"]
            if not _gone(owner, live_owners):
                continue
            why = self._unusable(meta)
            if why:
                if on_note:
                    on_note(f"ignoring the checkpoint in {d}: {why}")
                shutil.rmtree(d, ignore_errors=True)
                continue
            import orbax.checkpoint as ocp

            try:
                tree = ocp.PyTreeCheckpointer().restore(d / meta["state"])
            except Exception as e:  # noqa: BLE001 - unreadable: it cannot be resumed
                if on_note:
                    on_note(f"ignoring the checkpoint in {d}: unreadable ({type(e).__name__})")
                shutil.rmtree(d, ignore_errors=True)
                continue
            self.leases.adopt(owner)
            os.replace(d, self.dir)
            return Saved(owner, [np.asarray(tree[k]) for k in sorted(tree)],
                         np.asarray(meta["slot_net"], np.int64),
                         np.asarray(meta.get("epochs", [0]), np.int64))
        return None

    def _remove_leftovers(self, live_owners: set[str]) -> None:
        """The half-written states (``*.orbax-checkpoint-tmp*``) of writers that are gone,
        and their folders when no whole checkpoint is left in them (killed in the first
        save)."""
        for d in self.root.iterdir():
            if not d.is_dir() or d == self.dir:
                continue
            meta = _read_meta(d)
            owner = meta["owner"] if meta else _owner_of(d.name)
            if owner is None or not _gone(owner, live_owners):
                continue
            for tmp in d.glob(f"*{ORBAX_TMP}*"):
                shutil.rmtree(tmp, ignore_errors=True)
            if meta is None:
                shutil.rmtree(d, ignore_errors=True)

    def _unusable(self, meta: dict) -> str:
        if meta.get("package_version") != __version__:
            return (f"written by mlds_jax {meta.get('package_version')}, this is "
                    f"{__version__}")
        if meta.get("config") != self.identity:
            return "made with another config"
        return ""


def _read_meta(d: Path) -> dict | None:
    try:
        meta = json.loads((d / "meta.json").read_text())
        return meta if {"owner", "state", "slot_net"} <= set(meta) else None
    except (OSError, ValueError):
        return None


def _safe(owner: str) -> str:
    return owner.replace("/", "_").replace(":", "_")


def _owner_of(folder: str) -> str | None:
    """The writer ("host:pid:token") a checkpoint folder `_safe(owner)` belongs to."""
    parts = folder.rsplit("_", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return ":".join(parts)


def _gone(owner: str, live_owners: set[str]) -> bool:
    """A writer of this host is gone once its process has exited; one of another host once
    its leases have expired."""
    alive = local_owner_alive(owner)
    return owner not in live_owners if alive is None else not alive
