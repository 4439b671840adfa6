"""Make a complete raw deflate stream joinable: clear its final-block bit and end it with an
empty stored block (what a sync flush writes), so that more chunks can follow it.

libdeflate compresses best per CPU second at gzip's middle levels but only writes complete
streams, with the final-block bit (BFINAL) on its last block.  Blocks are not
self-delimiting, so finding where the last one starts means walking the stream's symbols:
the C extension `_deflate_blocks` does that without producing any output (no window, no
copies), with the GIL released.
"""

from __future__ import annotations

from octoray.formats._deflate_blocks import PADDING as WALK_PADDING  # read past the stream
from octoray.formats._deflate_blocks import final_block_bits
from octoray.formats.gzip import SYNC_FLUSH_TAIL


def unfinish(stream) -> bytearray:
    """The same data as `stream`, without BFINAL and ending byte-aligned, ready for more."""
    out = bytearray(len(stream) + WALK_PADDING)
    out[: len(stream)] = stream  # the one copy: the walk reads it in place
    start, end = final_block_bits(out, len(stream))
    del out[(end + 7) // 8:]
    out[start >> 3] &= ~(1 << (start & 7)) & 0xFF
    spare = -end % 8
    if spare:
        out[-1] &= (1 << (8 - spare)) - 1  # zero the bits after the end-of-block code
    # an empty stored block: 3 header bits, padding to a byte boundary, LEN=0, NLEN=0xFFFF
    out += SYNC_FLUSH_TAIL if spare >= 3 else b"\x00" + SYNC_FLUSH_TAIL
    return out
