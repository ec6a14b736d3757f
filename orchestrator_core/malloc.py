"""The C allocator's tuning of a serving replica (glibc `mallopt`).

Where it sits: `cli.serve` calls `limit_malloc_arenas(settings.malloc_arena_max)` once, before the event
loop and any thread starts; nothing else calls it. It calls glibc's `mallopt(M_ARENA_MAX, n)` through
ctypes.

Why: glibc gives each thread that allocates its own malloc arena (up to 8 per core), and a replica runs
threads (one per SQLite connection, the default executor, the trace exporter). Memory freed in one
arena is not reused by another, so a burst of submissions leaves each thread's arena holding its own
high-water mark: RSS that the held runs never use. A small cap makes the threads share arenas. It has
the effect of the MALLOC_ARENA_MAX environment variable, but as a setting of the service
(`malloc_arena_max`, `GL_ORCHESTRATOR_MALLOC_ARENA_MAX`; `null` keeps glibc's default).

On a C library that is not glibc (musl, macOS), there is no `mallopt` with this option: nothing is
changed and the result says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Final

M_ARENA_MAX: Final = -8  # glibc's <malloc.h>

Mallopt = Callable[[int, int], int]


def glibc_mallopt() -> Mallopt | None:
    """glibc's `mallopt`, or None when the process's C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018  (present in glibc only)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    fn: Mallopt = mallopt
    return fn


def limit_malloc_arenas(arena_max: int | None, mallopt: Mallopt | None = None) -> bool:
    """Cap glibc's malloc arenas at `arena_max` (None: leave the default). True when applied.

    Call it before threads start: arenas already made stay. `mallopt`: glibc's (`glibc_mallopt()`)
    unless given."""
    if arena_max is None:
        return False
    fn = mallopt if mallopt is not None else glibc_mallopt()
    if fn is None:
        return False
    return fn(M_ARENA_MAX, arena_max) == 1
