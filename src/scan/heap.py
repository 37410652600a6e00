"""Keep the memory one training step frees for the next step (Linux with glibc only).

glibc gives every allocation above its mmap threshold (32 MB at most) its own fresh mapping and
unmaps it again on free. A training step whose activations exceed that size then faults all of
their pages back in, 4 KB at a time, at every step: on the project's 2-core CPU the MNIST
preset's SimCLR step made about 120,000 page faults a second and spent a third of its time in the
kernel. Serving large blocks from the heap (M_MMAP_MAX = 0) and never handing the heap's top back
(M_TRIM_THRESHOLD) lets the next step reuse the same pages; the process keeps its peak memory until
it exits, which a training process does anyway. Measured in benchmarks/README.md (the bullet
"Freed memory kept for the next step").
glibc offers no other switch for this (jemalloc or tcmalloc would need LD_PRELOAD before start-up).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Callable

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
# The largest value mallopt accepts for M_TRIM_THRESHOLD (an int).
NEVER_TRIM = 2**31 - 1
# glibc's defaults, and the mmap threshold its dynamic rule settles at after the first large
# free (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit): what a process that never calls mallopt runs with.
GLIBC_MMAP_MAX = 65536
GLIBC_TRIM_THRESHOLD = 128 * 1024
GLIBC_SETTLED_MMAP_THRESHOLD = 32 * 1024 * 1024


def _glibc_function(name: str) -> Callable[..., int] | None:
    """glibc's function `name` (mallopt, malloc_trim), or None where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):  # musl and other C libraries have neither function
        return None


def _mallopt(*settings: tuple[int, int]) -> bool:
    """Apply (parameter, value) pairs with glibc's mallopt; False where there is no glibc."""
    mallopt = _glibc_function("mallopt")
    return mallopt is not None and all([bool(mallopt(parameter, value)) for parameter, value in settings])


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks for reuse; True when it took effect."""
    return _mallopt((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM))


def glibc_defaults() -> bool:
    """Undo keep_freed_memory: glibc's behaviour in a process that never called mallopt, once
    its mmap threshold has settled (benchmarks time the original-style baseline with this)."""
    return _mallopt((M_MMAP_MAX, GLIBC_MMAP_MAX), (M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD),
                    (M_MMAP_THRESHOLD, GLIBC_SETTLED_MMAP_THRESHOLD))


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the OS now (glibc's malloc_trim), so that a later
    growth shows in the resident set (benchmarks measure peak memory this way); False without glibc."""
    malloc_trim = _glibc_function("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True
