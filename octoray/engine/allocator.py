"""Keep freed memory in the process during a long stream instead of handing it back.

A streaming run allocates and frees the same few MiB-sized buffers (chunks read, compressor
state, results) hundreds of times.  glibc's default is to return a freed heap top above
128 KiB-2 MiB to the kernel, so each new buffer comes back as fresh pages, zeroed by the
kernel one page fault at a time (a tenth of `fgzip -1`'s CPU time: docs/design.md).  The
memory kept is what the run already used at its peak, so RSS does not grow.
"""

from __future__ import annotations

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
TRIM_THRESHOLD = 64 << 20  # keep up to this much freed heap
TOP_PAD = 16 << 20  # grow the heap in steps this large
MMAP_THRESHOLD = 32 << 20  # glibc's largest: buffers below it come from the reusable heap

_tuned = False


def keep_freed_memory(keep: int = TRIM_THRESHOLD) -> None:
    """Once per process (the first call's `keep`: bytes of freed heap kept; a training step
    frees more than a stream does); quietly nothing where the C library is not glibc."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    try:
        from octoray.engine._malloc import mallopt
    except ImportError:  # a checkout whose extensions are not built: the default allocator
        return
    for option, value in ((M_TRIM_THRESHOLD, keep), (M_TOP_PAD, TOP_PAD),
                          (M_MMAP_THRESHOLD, MMAP_THRESHOLD)):
        mallopt(option, value)
