"""Decode one chunk of a chunked gzip member (octoray.formats.gzip_chunks) and prove where it
ends: what a worker runs, on any thread or Dask worker.

A reader cuts the compressed stream where it believes chunks end (an index, or a marker found
by scanning), and a marker can occur inside compressed data by chance.  So a chunk is only
accepted when decoding it shows that its end is a true block boundary of the stream.  The
inflater has no way to report block boundaries, so the chunk is decoded and then fed a probe,
01 00 00 ff ff: a final, empty stored block.  At a block boundary it ends the stream with no
output and no byte left over.  Anywhere else it cannot: inside a stored block it is output;
inside a Huffman-coded block, the stream can only end through the current block's
end-of-block code followed by a final block that ends in the probe's last byte, and the bits
after any prefix of the probe either start a block that needs more input, or an invalid one,
or are too many for an end-of-block code (at most 15 bits).  One state is not excluded by the
probe: the middle of the header of a dynamic block marked final; reaching it needs a stream
built for it, and the whole member's CRC-32 and length are checked as always.

A chunk that started at a true boundary and is verified this way decodes exactly as in a
sequential decode (a reference before its start fails: the inflater's window is empty), so
its end is the next chunk's true start: boundaries are proved one after the other.
"""

from __future__ import annotations

from isal import igzip_lib, isal_zlib

PROBE = b"\x01\x00\x00\xff\xff"
"""A final empty stored block: BFINAL=1 and BTYPE=00 in the first byte, LEN 0, NLEN 0xffff."""


class InflatedChunk:
    """A verified chunk: its output, the output's CRC-32, how many input bytes it took, and
    whether it ended the deflate stream (then `used` may be less than the input given)."""

    __slots__ = ("data", "crc", "used", "final")

    def __init__(self, data: bytes, crc: int, used: int, final: bool):
        self.data, self.crc, self.used, self.final = data, crc, used, final

    def __reduce__(self):  # travels back from Dask workers
        return InflatedChunk, (self.data, self.crc, self.used, self.final)


def inflate_chunk(data, chunk_size: int, variable: bool = False) -> InflatedChunk | None:
    """Decode `data` as one chunk that starts at a block boundary with an empty window.

    Accepted: (a) the stream ends inside `data` (a final chunk) after at most `chunk_size`
    bytes of output; or (b) `data` ends exactly at a block boundary, proved by the probe,
    after exactly `chunk_size` bytes of output (at most that many if `variable`).
    None otherwise: the cut was not a chunk end, or the data is damaged; the caller then
    tries another cut or decodes sequentially, which reports the damage as gzip does.
    """
    inflater = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_DEFLATE)
    try:
        out = inflater.decompress(data, chunk_size + 1)
    except igzip_lib.IsalError:
        return None
    if len(out) > chunk_size:
        return None
    if inflater.eof:
        return InflatedChunk(out, isal_zlib.crc32(out), len(data) - len(inflater.unused_data), True)
    if not inflater.needs_input or (len(out) != chunk_size and not variable):
        return None
    try:
        extra = inflater.decompress(PROBE)
    except igzip_lib.IsalError:
        return None
    if extra or not inflater.eof or inflater.unused_data:
        return None
    return InflatedChunk(out, isal_zlib.crc32(out), len(data), False)
