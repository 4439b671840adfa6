"""compress(1)'s LZW format (.Z, magic 1f 9d), read as gzip 1.12 reads it.

The decoding itself is C (octoray.formats._lzw, which documents the format's quirks).  Here:
the flags byte, gzip's verdicts (as octoray.formats.faults types), and a streaming decode that
keeps memory flat.
gzip decodes an LZW stream to the end of its input (it is always the last "member"), warns
about reserved flag bits and goes on, and refuses codes wider than 16 bits.  pigz differs
(it refuses reserved bits and 9-bit streams, and some codes gzip accepts): fgzip follows gzip.
"""

from __future__ import annotations

from octoray.formats import faults
from octoray.formats._lzw import Corrupt, Decoder

MAGIC = b"\x1f\x9d"
BITS_MASK = 0x1F
FLAG_RESERVED = 0x60
FLAG_BLOCK_MODE = 0x80
MAX_BITS = 16


def flags_warning(flags: int) -> faults.UnknownLzwFlags | None:
    """gzip's warning (exit status 2, decoding goes on) for reserved bits in the flags byte."""
    reserved = flags & FLAG_RESERVED
    return faults.UnknownLzwFlags(reserved) if reserved else None


def decoder_for(flags: int) -> Decoder:
    """A decoder for the stream whose flags byte (the third byte) is `flags`;
    faults.LzwTooManyBits for codes wider than gzip handles."""
    bits = flags & BITS_MASK
    if bits > MAX_BITS:
        raise faults.LzwTooManyBits(bits)
    return Decoder(bits, bool(flags & FLAG_BLOCK_MODE))


def decode(pieces, write, *, on_warning=None) -> int:
    """Decode the LZW stream that `pieces` yields, starting just after the magic (with the
    flags byte), to the end of the input.  Output goes to `write` in pieces of at most
    1 MiB; `on_warning(notice)` hears about reserved flag bits before any output.  Returns
    the number of input bytes read.  Raises faults.UnexpectedEnd or faults.LzwCorrupt for
    damage; the output before a bad code has been written, as gzip writes it."""
    pieces = iter(pieces)
    first = b""
    while not first:
        first = next(pieces, None)
        if first is None:
            raise faults.UnexpectedEnd()
    flags = first[0]
    warning = flags_warning(flags)
    if warning and on_warning is not None:
        on_warning(warning)
    decoder = decoder_for(flags)
    consumed = 0
    piece = memoryview(first)[1:]
    consumed += 1
    while piece is not None:
        try:
            decoder.decompress(piece, write)
        except Corrupt as error:
            raise faults.LzwCorrupt(first=str(error) == "first") from None
        consumed += len(piece)
        piece = next(pieces, None)
    return consumed
