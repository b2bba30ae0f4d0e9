"""This process's heap: handing freed memory back to the operating system."""

from __future__ import annotations

import ctypes


def return_freed_memory() -> None:
    """Hand the heap memory freed so far back to the operating system (glibc's
    `malloc_trim`). A stage's large temporaries (score blocks, Gram matrices, candidate
    tables) are freed when it ends, but glibc keeps most of the pages for reuse, so the
    flow's resident memory stays at its highest stage's and the next stage's peak lands on
    top of it. Does nothing where glibc is not the allocator."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return
