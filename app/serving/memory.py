"""The C allocator's thresholds, pinned for serving.

glibc's malloc serves a request above its mmap threshold with fresh pages from the kernel
and returns them on free, and it moves that threshold as the process runs: it rises to the
size of an mmap-ed block freed. A large prediction's tensors (10,000 rows through a 64-wide
layer are 2.5 MB each) therefore land on one side or the other depending on what the
process happened to free before. On the wrong side each pass faults in and zeroes megabytes
of new pages: measured on a 10,000-row request, 1,800 page faults and a forward pass of
10 ms instead of 4. Pinning the thresholds at the top of glibc's own adaptive range keeps
that memory in the heap for reuse, whatever ran before.
"""

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h) and the largest threshold its adaptive rule reaches
# on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX); the trim threshold follows at twice that, as it does.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES


def pin_malloc_thresholds() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; False where there is no glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    pinned = (
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    )
    log.debug("malloc thresholds pinned: %s", pinned)
    return pinned
