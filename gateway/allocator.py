"""The C allocator of a long-lived process: freed memory goes back to the system.

glibc serves large blocks (NumPy arrays) with mmap, but after one is freed it raises its
mmap threshold to that block's size, up to 32 MB, so later arrays of the kind come from
the heap, which only shrinks from its top: a gateway's batches and the registry's parts,
freed long ago, stay resident behind a long-lived block. A fixed threshold keeps every
block over 128 KiB in mmap (unmapped when freed), two arenas keep the pool threads from
growing heaps of their own, and `release` hands back what is free in the heap after a
large transient (the registry's rows at start). No-ops where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

__all__ = ["release", "tune"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
MMAP_THRESHOLD = 128 * 1024
TRIM_THRESHOLD = 1 << 20
ARENAS = 2


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018  (glibc's; musl and others lack it)
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def tune() -> bool:
    """Fixed mmap and trim thresholds and two arenas, for this process from now on; call it
    early (before large allocations). False where it does not apply."""
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    ok &= libc.mallopt(_M_ARENA_MAX, ARENAS)
    return bool(ok)


def release() -> bool:
    """Return the heap's free memory to the system (malloc_trim); False where it cannot."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))
