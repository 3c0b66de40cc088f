"""The `mlds` executable: a stop (Ctrl-C, SIGTERM) while the command line and JAX are still
being imported ends in one line and the shell's exit status, not an import traceback."""

from __future__ import annotations

import os
import signal
import sys


def _stop(signum, frame):
    name = signal.Signals(signum).name
    sys.stderr.write(f"stopped by {name} while starting; nothing was written\n")
    sys.stderr.flush()
    os._exit(128 + signum)  # nothing to clean up yet; an exception could land in a callback


def main():
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    from mlds_jax.cli import main as cli

    for s, handler in previous.items():
        signal.signal(s, handler)
    cli()
