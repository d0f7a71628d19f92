"""Keep glibc's allocator from giving memory back to the kernel between bursts.

The data plane allocates and frees 64 KiB blocks all the time (a UDP GRO
receive, a merged TCP super-segment).  With glibc's defaults the freed top of
the heap is trimmed (``M_TRIM_THRESHOLD`` 128 KiB) and blocks near the mmap
threshold come and go as mappings, so each burst pays page faults and page
clearing in the kernel: a quarter of the receiving gateway's CPU time in our
benchmark.  Raising the trim and mmap thresholds and padding the heap top
keeps those pages mapped and reused.  Memory use grows by at most the padding.
"""

from __future__ import annotations

import contextlib
import ctypes

M_TRIM_THRESHOLD = -1  # malloc.h
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

TRIM_THRESHOLD = 256 * 1024 * 1024
TOP_PAD = 16 * 1024 * 1024
MMAP_THRESHOLD = 16 * 1024 * 1024


def keep_heap_mapped() -> bool:
    """Tune glibc malloc for the burst-sized allocations of the data plane.

    Returns False (and changes nothing) where the C library has no ``mallopt``
    (musl, other systems) or refuses.
    """
    with contextlib.suppress(OSError, AttributeError, TypeError):
        # The C library the interpreter runs on (dlopen(NULL)): ctypes.util.find_library
        # would run ldconfig in a subprocess and import tempfile (0.2 MB) to find it.
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        return all(
            mallopt(option, value) == 1
            for option, value in (
                (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                (M_TOP_PAD, TOP_PAD),
                (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            )
        )
    return False


def release_free_memory() -> bool:
    """Give the pages of glibc's free chunks back to the kernel, once, after start-up.

    Start-up frees much of what it allocated (the source of each module read, the
    config's parse, the warm-up handshake's two cores), and with the thresholds above
    glibc keeps those pages for good.  ``malloc_trim(0)`` hands them back (a few
    milliseconds); the data plane's bursts map what they need again, and from then on
    the thresholds keep it.  False where the C library has no ``malloc_trim`` or
    nothing was released.
    """
    with contextlib.suppress(OSError, AttributeError, TypeError):
        malloc_trim = ctypes.CDLL(None).malloc_trim
        malloc_trim.argtypes = [ctypes.c_size_t]
        malloc_trim.restype = ctypes.c_int
        return bool(malloc_trim(0))
    return False
