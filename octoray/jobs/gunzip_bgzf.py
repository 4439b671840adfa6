"""fgzip -d of BGZF input (octoray.formats.bgzf) on every core: the members are cut apart by
the sizes their headers give, decoded in batches of about a megabyte on the engine, and
written in order.

The run of BGZF members ends where the input does or holds anything else: that, and a member
that does not decode exactly, is handed back to the sequential decoder (octoray.jobs.gunzip)
with everything read after it, so output, messages and exit status stay gzip's.
"""

from __future__ import annotations

from collections import deque

from octoray.engine.stream import ordered_map
from octoray.formats import bgzf

BATCH = 1 << 20  # compressed bytes a task decodes, at most
BATCH_OUTPUT = 4 << 20  # ... and output bytes (64 KiB of zeros are a member of 80 bytes)


def inflate_run(source, write, totals, executor, count_member) -> int:
    """Decode the BGZF members at the start of `source` (an octoray.jobs.gunzip input) to
    `write`, counting each in `totals` with `count_member(totals, crc, size)`; how many."""
    batches: deque = deque()  # (data, sizes) sent and not yet written, oldest first
    results = ordered_map(bgzf.inflate_members, _batches(source, batches), executor)
    members = 0
    try:
        for output, decoded, failed in results:
            data, sizes = batches.popleft()
            write(output)
            for crc, length, mtime in decoded:
                totals.mtime = mtime or totals.mtime
                count_member(totals, crc, length)
            members += len(decoded)
            if failed is not None:  # that member and all read after it go back, in order
                source.give_back(b"".join([data[sum(sizes[:failed]):], *(d for d, _ in batches)]))
                batches.clear()
                break
    finally:
        results.close()
    return members


def _batches(source, batches: deque):
    """(data, sizes) of whole BGZF members, at most about BATCH bytes a batch, taken from
    `source` until what comes next is not a complete BGZF member.  Members are cut from what
    the source holds, and it reads more only for a member it holds part of: each byte is
    copied once into the buffer and once out of it."""
    while True:
        buffer, sizes, pos, output = source.buffer, [], 0, 0
        while pos < BATCH and output < BATCH_OUTPUT:
            size = bgzf.member_size(buffer, pos)
            if size is None or pos + size > len(buffer):
                break
            length = bgzf.output_size(buffer, pos, size)
            if length > bgzf.MAX_OUTPUT:  # not bgzip's: its own reader bounds memory
                break
            sizes.append(size)
            pos += size
            output += length
        if not sizes:
            if source.eof or len(buffer) >= bgzf.MAX_MEMBER or not source.fill(len(buffer) + 1):
                return  # not BGZF, or cut off: the sequential decoder says what it is
            continue
        data = source.take(pos)
        batches.append((data, sizes))
        yield data, sizes
