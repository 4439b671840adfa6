"""zlib streams (RFC 1950, `pigz -z` output, suffix .zz) as `pigz -d` reads them.

gzip does not read zlib; pigz does, and fgzip follows it: a stream is recognised by its first
two bytes (method 8, a window of at most 32 KiB, no preset dictionary, the FCHECK multiple of
31), decoded, and its Adler-32 (big-endian, after the deflate data) checked.  pigz reads one
stream and calls anything after it "trailing junk" (a warning).  Damage is raised as
octoray.formats.faults types, an Adler-32 mismatch as a CRC mismatch (gzip words no other).
"""

from __future__ import annotations

from isal import isal_zlib

from octoray.formats import faults
from octoray.formats.raw_inflate import Input, inflate

HEADER_SIZE = 2
TRAILER_SIZE = 4


def is_header(first: bytes) -> bool:
    """Whether `first` (at least two bytes) starts a zlib stream pigz decodes.  A gzip member
    (1f 8b) never passes: 0x1f8b is no multiple of 31."""
    if len(first) < HEADER_SIZE:
        return False
    word = first[0] << 8 | first[1]
    return word % 31 == 0 and word & 0x8F20 == 0x0800


class Decoded:
    """A stream decoded: bytes out, and the input read past its trailer (pigz's trailing junk
    starts with `unused`, then goes on with whatever the caller's `pieces` still yields)."""

    __slots__ = ("size", "unused")

    def __init__(self, size: int, unused: bytes):
        self.size, self.unused = size, unused


def decode(pieces, write) -> Decoded:
    """Decode the zlib stream at the start of `pieces` (an iterator of bytes-like pieces) to
    `write`; faults.UnexpectedEnd, faults.CorruptData or faults.CrcMismatch (the Adler-32)
    where it is damaged."""
    source = Input(iter(pieces))
    header = source.read(HEADER_SIZE)
    if not is_header(header):
        raise ValueError("not a zlib header: check with is_header first")
    size, adler = inflate(source, write, isal_zlib.adler32, 1)
    trailer = source.read(TRAILER_SIZE)
    if len(trailer) < TRAILER_SIZE:
        raise faults.UnexpectedEnd()
    if int.from_bytes(trailer, "big") != adler & 0xFFFFFFFF:
        raise faults.CrcMismatch()
    return Decoded(size, source.held)
