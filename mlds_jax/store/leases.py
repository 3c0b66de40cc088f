"""Claims on a store's chunks, so that many writers (processes, hosts, Ray workers) fill one
store without two of them ever touching one chunk, and a dead writer's work is taken over.

A writer trains the nets of chunk ``k`` (rows ``[k * C, (k + 1) * C)``, C = chunk_rows)
only while it holds the lease ``<store>/leases/chunk-<k>.json``: the owner (host, pid, a
random token) and an expiry time. A background thread renews every held lease each quarter
of its lifetime; a writer that dies stops renewing, and once the lease has expired another
writer may take the chunk over. Every decision (claim, renew, take over, release) happens
under an exclusive ``flock`` on ``<store>/leases/.lock`` and rewrites lease files atomically,
so two writers never hold one chunk. Before writing finished rows a writer checks that it
still holds their chunk (a writer stalled past its expiry drops them; the new owner trains
them again).

Needs a file system whose ``flock`` is shared by every writer: any local one, and NFS (v4, or
v3 with lockd), Lustre (mounted with ``flock``), GPFS, CephFS. Object storage has no such
lock: there the leases would need a conditional write (S3 ``If-None-Match``) or an external
coordinator; see docs/scaling-out.md.

`Leases` is the standard library alone; `Claims` reads the store's status to hand a trainer
the pending nets of the chunks it claims.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from mlds_jax.store.dataset_store import DatasetStore
from mlds_jax.store.schema import StoreError

LEASES = "leases"  # the folder in a store


@dataclasses.dataclass(frozen=True)
class Lease:
    chunk: int
    owner: str
    expires: float  # time.time() seconds

    def live(self, now: float) -> bool:
        """Not expired, and (for a writer of this host) its process still runs: a rerun
        after a SIGKILL takes its own chunks back at once instead of after the expiry."""
        if self.expires <= now:
            return False
        return local_owner_alive(self.owner) is not False


def local_owner_alive(owner: str) -> bool | None:
    """Whether the writer `owner` ("host:pid:token") still runs, if it is of this host;
    None for another host's (only its leases' expiry tells)."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Leases:
    """This writer's leases on the chunks of the store at ``path``."""

    def __init__(self, path, seconds: float = 120.0, owner: str | None = None):
        if seconds <= 0:
            raise ValueError(f"lease seconds must be positive, got {seconds}")
        self.dir = Path(path) / LEASES
        self.seconds = seconds
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held: set[int] = set()
        self.taken_over: list[int] = []  # chunks claimed from an expired lease
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ---- the lock and the files -------------------------------------------------------

    @contextlib.contextmanager
    def locked(self):
        """Exclusive over every writer of this store (flock on ``leases/.lock``)."""
        try:
            self.dir.mkdir(exist_ok=True)
            f = open(self.dir / ".lock", "a+b")
        except OSError as e:
            where = self.dir if self.dir.is_dir() else self.dir.parent
            raise StoreError(f"store at {self.dir.parent} is not writable: cannot create a "
                             f"file in {where} ({e.strerror or e})") from e
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _file(self, chunk: int) -> Path:
        return self.dir / f"chunk-{chunk}.json"

    def _read(self, chunk: int) -> Lease | None:
        try:
            doc = json.loads(self._file(chunk).read_text())
            return Lease(chunk, str(doc["owner"]), float(doc["expires"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return Lease(chunk, "?", 0.0)  # unreadable: treat as expired, so it is taken over

    def _write(self, chunk: int) -> None:
        doc = {"owner": self.owner, "expires": time.time() + self.seconds,
               "seconds": self.seconds}
        tmp = self.dir / f".chunk-{chunk}.{uuid.uuid4().hex[:8]}.partial"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self._file(chunk))

    def all(self) -> dict[int, Lease]:
        """Every lease file's lease (live or not), by chunk."""
        out = {}
        for p in self.dir.glob("chunk-*.json"):
            try:
                chunk = int(p.stem.split("-", 1)[1])
            except ValueError:
                continue
            lease = self._read(chunk)
            if lease is not None:
                out[chunk] = lease
        return out

    def others(self) -> set[int]:
        """Chunks another writer holds a live lease on."""
        now = time.time()
        return {k for k, lease in self.all().items() if lease.owner != self.owner
                and lease.live(now)}

    # ---- claiming -----------------------------------------------------------------------

    def claim(self, candidates: Iterable[int]) -> int | None:
        """Take the first chunk of ``candidates`` no other writer holds a live lease on (call
        under ``locked()``, after checking the chunk still has work). None if there is none."""
        now = time.time()
        for chunk in candidates:
            lease = self._read(chunk)
            if lease is not None and lease.owner != self.owner and lease.live(now):
                continue
            if lease is not None and lease.owner != self.owner:
                self.taken_over.append(chunk)
            self._write(chunk)
            self.held.add(chunk)
            return chunk
        return None

    def adopt(self, owner: str) -> list[int]:
        """Make every lease of ``owner`` (a writer that is gone, whose checkpoint this writer
        resumes) this writer's, expired or not. Call under ``locked()``."""
        chunks = sorted(k for k, lease in self.all().items() if lease.owner == owner)
        for chunk in chunks:
            self._write(chunk)
            self.held.add(chunk)
        return chunks

    def holds(self, chunk: int) -> bool:
        """This writer still holds ``chunk`` (it was not expired and taken over)."""
        lease = self._read(chunk)
        return chunk in self.held and lease is not None and lease.owner == self.owner

    def release(self, chunk: int) -> None:
        with self.locked():
            if self.holds(chunk):
                self._file(chunk).unlink(missing_ok=True)
            self.held.discard(chunk)

    def release_all(self) -> None:
        self.stop_renewing()
        for chunk in sorted(self.held):
            self.release(chunk)

    def renew(self) -> None:
        """Push the expiry of every lease still held; forget those lost to another writer."""
        with self.locked():
            for chunk in sorted(self.held):
                if self.holds(chunk):
                    self._write(chunk)
                else:
                    self.held.discard(chunk)

    # ---- the heartbeat ------------------------------------------------------------------

    def start_renewing(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()

        def beat():
            while not self._stop.wait(self.seconds / 4):
                try:
                    self.renew()
                except OSError:
                    pass  # a transient file-system error: the next beat tries again

        self._thread = threading.Thread(target=beat, name="mlds-lease-renewal", daemon=True)
        self._thread.start()

    def stop_renewing(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


class Claims:
    """The net ids this writer trains: pending rows of the `work` chunks, claimed one chunk
    at a time as the trainer asks for more (so writers share what is left), each chunk's
    lease released once its nets are written."""

    def __init__(self, store: DatasetStore, leases: Leases, work: list[int], lo: int, hi: int):
        self.store, self.leases = store, leases
        self.rows = store.array("status").chunks[0]
        self.lo, self.hi = lo, hi
        todo = store.pending(hi)
        todo = todo[todo >= lo] // self.rows
        self.todo = [k for k in work if k in set(todo.tolist())]  # chunks with work, at start
        self.outstanding: dict[int, int] = {}  # chunk -> nets handed out, not yet written
        self.first: list[int] = []  # ids to hand out before claiming more (adopted chunks)
        self.in_flight = np.empty(0, np.int64)  # a resumed checkpoint's nets

    def adopt(self, in_flight: np.ndarray) -> np.ndarray:
        """Take the chunks of a resumed checkpoint: those its writer still leased (now this
        writer's) and those of its nets in flight. Their nets in flight count as handed out,
        their other pending nets come first. Returns the nets in flight whose chunk another
        writer holds now (they are not resumed)."""
        with self.leases.locked():
            for chunk in sorted(set((in_flight // self.rows).tolist()) - self.leases.held):
                self.leases.claim([chunk])
        lost = in_flight[~np.isin(in_flight // self.rows, list(self.leases.held))]
        self.in_flight = in_flight[~np.isin(in_flight, lost)]
        for chunk in sorted(self.leases.held):
            ids = self._pending(chunk)
            if chunk in self.todo:
                self.todo.remove(chunk)
            if not len(ids):
                self.leases.release(chunk)
                continue
            self.outstanding[chunk] = len(ids)
            self.first += [int(n) for n in ids if n not in set(in_flight.tolist())]

    def _pending(self, chunk: int) -> np.ndarray:
        start, stop = max(chunk * self.rows, self.lo), min((chunk + 1) * self.rows, self.hi)
        return start + np.flatnonzero(self.store.read_rows_of("status", start, stop) == 0)

    def _claim(self) -> np.ndarray | None:
        with self.leases.locked():
            others = self.leases.others()
            for chunk in list(self.todo):
                if chunk in others or chunk in self.outstanding:
                    continue
                ids = self._pending(chunk)  # read under the lock: the truth now
                self.todo.remove(chunk)
                if len(ids) and self.leases.claim([chunk]) is not None:
                    self.outstanding[chunk] = len(ids)
                    return ids
        return None

    def ids(self) -> Iterator[int]:
        yield from self.first
        while (got := self._claim()) is not None:
            yield from got.tolist()

    def still_held(self, net_ids) -> np.ndarray:
        chunks = np.asarray(net_ids) // self.rows
        held = {int(k): self.leases.holds(int(k)) for k in np.unique(chunks)}
        return np.array([held[int(k)] for k in chunks], bool)

    def finished(self, net_ids) -> None:
        """`net_ids` left the trainer (written, or dropped with a lost lease)."""
        for k in (np.asarray(net_ids) // self.rows).tolist():
            self.outstanding[k] -= 1
            if not self.outstanding[k]:
                del self.outstanding[k]
                self.leases.release(k)
