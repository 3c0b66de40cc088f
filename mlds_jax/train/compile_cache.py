"""How the `mlds` command compiles. JAX's persistent compilation cache: a rerun, a resume or
a second writer loads the population's compiled step from disk instead of compiling it
again. And on a CPU, XLA's backend at optimisation level 1 (`cpu_optimization`).

Where: `MLDS_JAX_COMPILE_CACHE` (a directory, or `0` for none); otherwise JAX's own
`JAX_COMPILATION_CACHE_DIR` when it is set; otherwise `$XDG_CACHE_HOME/mlds-jax/jax`
(`~/.cache/mlds-jax/jax`). The entries are keyed by the program, the compiler options, the
device and the JAX version, so a stale entry is never used; the directory is held to
`MAX_BYTES` (least recently used entries go first) under a file lock, so writers on one
machine may share it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MAX_BYTES = 1 << 30
_OFF = ("0", "off", "false", "no", "")


def cache_dir(environ=os.environ) -> Path | None:
    """The directory the cache lives in, or None when it is switched off."""
    chosen = environ.get("MLDS_JAX_COMPILE_CACHE")
    if chosen is not None:
        return None if chosen.strip().lower() in _OFF else Path(chosen).expanduser()
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    base = environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlds-jax" / "jax"


def enable(environ=os.environ) -> Path | None:
    """Turn the cache on for this process and the processes it starts (Ray workers inherit
    the environment); returns the directory, or None when off or not writable. JAX reads
    the variables when it is imported; if it already is, its config is updated too."""
    path = cache_dir(environ)
    if path is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            path = None  # a read-only home: compile every time, as without the cache
    if path is None:  # off means off, for JAX's own variable too
        environ.pop("JAX_COMPILATION_CACHE_DIR", None)
        if "jax" in sys.modules:
            sys.modules["jax"].config.update("jax_compilation_cache_dir", None)
        return None
    settings = {
        "JAX_COMPILATION_CACHE_DIR": str(path),
        # the population step compiles in about a second on a CPU: cache every program
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        # a size limit turns on JAX's file lock around reads and writes
        "JAX_COMPILATION_CACHE_MAX_SIZE": str(MAX_BYTES),
    }
    environ.update(settings)
    if "jax" in sys.modules:
        config = sys.modules["jax"].config
        config.update("jax_compilation_cache_dir", str(path))
        config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return path


# On a CPU the population step's arithmetic is the compiled kernel's (csrc/rnn.cc) or small
# XLA loops, and level 1 compiles DS1's in 4.3-5.0 s against 7.5-8.2 s at XLA's default, at
# the same training rate; level 0 is 3x slower to run (docs/benchmarks.md, "Compile time").
CPU_OPTIMIZATION = "--xla_backend_optimization_level=1"


def _accelerator_plugin() -> bool:
    """Whether a JAX GPU/TPU plugin is installed (jax_plugins.*): the level is untested there."""
    try:
        import jax_plugins
    except ImportError:
        return False
    import pkgutil

    return next(pkgutil.iter_modules(jax_plugins.__path__), None) is not None


def cpu_optimization(environ=os.environ) -> bool:
    """Add CPU_OPTIMIZATION to XLA_FLAGS for this process and those it starts, unless
    XLA_FLAGS already sets a level, JAX_PLATFORMS names another platform, or an accelerator
    plugin is installed; True when added. XLA reads the flags when JAX first uses a device,
    so call it before that (the CLI does, before any command runs)."""
    flags = environ.get("XLA_FLAGS", "")
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if "xla_backend_optimization_level" in flags or platforms not in ("", "cpu"):
        return False
    if not platforms and _accelerator_plugin():
        return False
    environ["XLA_FLAGS"] = f"{flags} {CPU_OPTIMIZATION}".strip()
    return True
