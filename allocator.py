"""Give the memory that coding freed back to the system, so that a large image's peak
resident memory is what coding holds, not what the allocator kept.

glibc's malloc keeps freed blocks below its mmap threshold (a threshold that grows up to
32 MiB as large blocks are freed) inside its heaps and returns pages to the system only
from a heap's top; a coder that frees and allocates tensors of many sizes, tile after tile,
then holds hundreds of MB that it no longer uses. ``release`` (glibc's malloc_trim) hands
every free page back; it changes no setting of the allocator, and where the C library is
not glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the process's C library has none."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


def release() -> None:
    """Return the allocator's free pages to the system (a no-op without glibc)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
