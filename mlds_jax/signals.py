"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM without losing what is finished.

`stop_signals.installed()` turns either signal into `Interrupted`, raised in the main thread
at the next Python instruction: between training steps, or once an XLA compile returns (a
C++ call cannot be interrupted). Writing a batch of finished nets is wrapped in
`stop_signals.deferred()`: a signal that arrives during the write is held until the rows
are in the store, so a stop never splits a write. What was in flight is dropped; the store
says which nets are pending, and rerunning the same command trains them.
"""

from __future__ import annotations

import contextlib
import signal
import threading

STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A run was stopped by `signum`; `exit_code` is the shell's 128 + signum. A
    BaseException, like KeyboardInterrupt: code that treats any Exception as a finding
    (verify reading a chunk) must not swallow a stop, let alone call the chunk damaged."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _StopSignals:
    def __init__(self):
        self._held: int | None = None
        self._deferring = 0
        self._installed = False
        # Signals that wait for the run's next checkpoint (SIGTERM while checkpointing):
        # the run saves, then calls check(now=True).
        self.wait_for_checkpoint: set[int] = set()

    def _handler(self, signum, frame):
        self._held = signum
        if not self._deferring:
            self.check()

    @property
    def pending(self) -> int | None:
        """The stop signal received and not yet acted on, if any."""
        return self._held

    def check(self, now: bool = False) -> None:
        """Raise `Interrupted` if a stop signal came and no write is in progress (and, for a
        signal in `wait_for_checkpoint`, only when `now`). The run calls this between steps
        too: Python may run the handler inside a callback that swallows its exception (JAX's
        garbage-collection hook does, mid-compile), so raising does not forget the signal;
        only leaving `installed()` does. A stop that propagated is not raised twice: nothing
        calls `check` while it unwinds."""
        if self._held is None or self._deferring:
            return
        if self._held in self.wait_for_checkpoint and not now:
            return
        raise Interrupted(self._held)

    @contextlib.contextmanager
    def installed(self):
        """Within the block, SIGINT and SIGTERM raise `Interrupted` (main thread only;
        elsewhere the block changes nothing)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._handler) for s in STOPPING_SIGNALS}
        self._held = None
        self._installed = True
        try:
            yield
        except Exception as e:
            # Library code that called back into Python may wrap the stop in its own error
            # (JAX's pytree comparison turns it into a ValueError whose cause it is).
            stop = _interruption(e)
            if stop is None:
                raise
            raise stop from None
        finally:
            self._installed = False
            self._held = None
            self.wait_for_checkpoint = set()
            for s, h in previous.items():
                signal.signal(s, h)

    def reclaim(self) -> None:
        """Within `installed()`, take SIGINT and SIGTERM back from a library that set its
        own handlers (ray.init does)."""
        if self._installed and threading.current_thread() is threading.main_thread():
            for s in STOPPING_SIGNALS:
                signal.signal(s, self._handler)

    @contextlib.contextmanager
    def deferred(self):
        """A stop signal that arrives within the block is raised when the block ends."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        self.check()


def _interruption(error: BaseException) -> Interrupted | None:
    """The `Interrupted` that `error` was raised from (its cause or context chain), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, Interrupted):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


stop_signals = _StopSignals()
