"""scan.heap: with freed memory kept, a step that allocates and frees the same large blocks
again stops faulting their pages back in."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")

# Five "steps" that each allocate, write and free 64 MB (above glibc's largest mmap threshold,
# like the activations of a batch-512 step) through the C library's malloc, as torch's CPU
# allocator does; the minor page faults of steps 2-5.
STEPS = textwrap.dedent("""
    import ctypes, resource, sys
    from scan.heap import glibc_defaults, keep_freed_memory
    took = {"keep": keep_freed_memory, "glibc": glibc_defaults}[sys.argv[1]]()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    faults = []
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(64 << 20)
        ctypes.memset(block, 1, 64 << 20)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(took, sum(faults[1:]))
""")


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True).stdout
    took, faults = out.split()
    return took, int(faults)


def test_kept_memory_is_reused_without_page_faults():
    took, faults = _faults("keep")
    assert took == "True"
    # 64 MB is 16,384 pages of 4 KB per step when it comes back from the kernel.
    assert faults < 1000


def test_glibc_defaults_give_blocks_back_to_the_kernel():
    took, faults = _faults("glibc")
    assert took == "True"
    # Each step maps the block afresh: at least one fault per 2 MB huge page, 4 steps.
    assert faults >= 4 * 32


# With freed memory kept, 64 MB written and freed stays resident until release_free_memory.
RELEASE = textwrap.dedent("""
    import ctypes, os
    from scan.heap import keep_freed_memory, release_free_memory
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    keep_freed_memory()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    block = libc.malloc(64 << 20)
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)
    kept = rss()
    took = release_free_memory()
    print(took, (kept - rss()) >> 20)
""")


def test_release_hands_kept_memory_back():
    out = subprocess.run([sys.executable, "-c", RELEASE], capture_output=True, text=True, check=True).stdout
    took, released_mb = out.split()
    assert took == "True"
    assert int(released_mb) >= 60
