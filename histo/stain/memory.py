"""Keep freed memory in the process for reuse (Linux, glibc), for programs that normalize many images.

PyTorch allocates a CPU tensor with ``malloc``. For blocks of megabytes glibc maps fresh pages and,
once they are freed, hands them back to the system; the next image then page-faults them in again.
Measured on two cores and 700x460 images: about 2,000 page faults per image, a quarter to a third
of the time of a Macenko or Vahadane normalization. Raising glibc's mmap and trim thresholds keeps
the freed blocks for reuse (the process holds on to its peak memory). Process-wide, so only entry
points that own their process call it (``histo-stain``; ``scripts/bench_stain.py --keep-freed-memory``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_MAX = 32 << 20  # glibc's upper limit for the mmap threshold on 64-bit systems


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Serve blocks up to 32 MB from the heap and return freed memory to the system only beyond
    ``trim_threshold`` bytes; True when glibc accepted both settings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
