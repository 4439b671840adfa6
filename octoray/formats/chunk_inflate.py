"""Decode one chunk of a chunked gzip member (octoray.formats.gzip_chunks) and prove where it
ends: what a worker runs, on any thread or Dask worker.

A reader cuts the compressed stream where it believes chunks end (an index, or a marker found
by scanning), and a marker can occur inside compressed data by chance.  So a chunk is only
accepted when decoding shows that its end is a true block boundary of the stream.  Inflaters
do not report block boundaries, so the chunk is decoded followed by a probe, 01 00 00 ff ff:
a final, empty stored block.  At a block boundary the probe ends the stream, with no output
and no byte left over.

ISA-L's streaming inflater (`inflate_chunk_isal`) decodes the chunk, then the probe, and
checks each step: the chunk's whole output comes before the probe, the probe adds none, and
the stream ends exactly at its last byte.  Nowhere but at a block boundary can that happen:
inside a stored block the probe is output; inside a Huffman-coded block the stream can only
end through the current block's end-of-block code and then a final block ending in the
probe's last byte, and after any prefix of the probe the bits either start a block that
needs more input, or an invalid one, or are too many for one end-of-block code (at most 15
bits).  The one state the probe does not exclude is the middle of the header of a dynamic
block marked final; reaching it takes a stream built for it, and the member's CRC-32 and
length are checked as always.  Such a chunk is `proved`.

libdeflate (borrowed from the `deflate` package, see _chunks.c) decodes chunk and probe in
one call, 25 % faster, and reports how much input the stream took and how much it wrote: the
chunk's size of output, ending exactly at the probe's end.  Any stream ending there ends with
the probe's own final stored block (its bits 1, 0, 0 occur nowhere else in it), so that too
is a block boundary, with one more exception: a final block that began inside the chunk and
decodes the probe's bits as data.  fgzip writes a final block only in the last chunk, so the
exception needs a marker found by chance inside the last chunk; the reader settles it with
the next chunk (which then cannot verify as a chunk of its own) or, before the last chunk,
with ISA-L.  Such a chunk is not `proved` on its own.  libdeflate also reads two codes that
RFC 1951 reserves (fixed-Huffman lengths 286 and 287, which only damage makes) where gzip
stops with `format violated`: the last chunk, where such a reading can end the stream early
and turn gzip's verdict into another, is decoded again with ISA-L (one chunk per member).

A chunk that started at a true boundary decodes exactly as in a sequential decode (a
reference before its start fails: the inflater's window is empty), so its proved end is the
next chunk's true start: boundaries are proved one after the other.
"""

from __future__ import annotations

from isal import igzip_lib, isal_zlib

PROBE = b"\x01\x00\x00\xff\xff"
"""A final empty stored block: BFINAL=1 and BTYPE=00 in the first byte, LEN 0, NLEN 0xffff."""


def _bind_libdeflate():
    try:
        import deflate._deflate as library

        from octoray.formats import _chunks

        return _chunks.inflate if _chunks.bind(library.__file__, isal_zlib.__file__) else None
    except (ImportError, AttributeError, OSError, TypeError):  # TypeError: an older build of _chunks
        return None


_libdeflate_inflate = _bind_libdeflate()


class InflatedChunk:
    """A chunk decoded: its output, the output's CRC-32, how many input bytes it took, whether
    it ended the deflate stream (then `used` may be less than the input given), and whether
    its end is proved on its own (see the module's docstring)."""

    __slots__ = ("data", "crc", "used", "final", "proved")

    def __init__(self, data: bytes, crc: int, used: int, final: bool, proved: bool = True):
        self.data, self.crc, self.used, self.final, self.proved = data, crc, used, final, proved

    def __reduce__(self):  # travels back from Dask workers
        return InflatedChunk, (self.data, self.crc, self.used, self.final, self.proved)


def inflate_chunk(data, chunk_size: int, variable: bool = False, strict: bool = False) -> InflatedChunk | None:
    """Decode `data` (a buffer, or a list of buffers that follow each other) as one chunk
    that starts at a block boundary with an empty window.

    Accepted: (a) the stream ends inside `data` (a final chunk) after at most `chunk_size`
    bytes of output; or (b) `data` ends at a block boundary, shown by the probe, after exactly
    `chunk_size` bytes of output (at most that many if `variable`).  None otherwise: the cut
    was not a chunk end, or the data is damaged; the caller then tries another cut or decodes
    sequentially, which reports the damage as gzip does.  With libdeflate (fixed-size chunks)
    a chunk of kind (b) is not `proved`: see the module's docstring.  `strict`: decode with
    ISA-L, proved, as the reader asks for the stream's last chunks (which then need no second
    decode on the reader's thread before the member ends).
    """
    if _libdeflate_inflate is None or variable or strict:
        return inflate_chunk_isal(data, chunk_size, variable)
    decoded = _libdeflate_inflate(data, PROBE, chunk_size, True)
    if decoded is None:
        return None
    output, crc, used, final = decoded
    if final:  # the stream's end, read strictly as gzip reads it: see the module's docstring
        return inflate_chunk_isal(data, chunk_size, variable)
    return InflatedChunk(output, crc, used, final, False)


def inflate_chunk_isal(data, chunk_size: int, variable: bool = False) -> InflatedChunk | None:
    """inflate_chunk with ISA-L's streaming inflater: the chunk, then the probe; `proved`."""
    if isinstance(data, list):
        data = b"".join(data)
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
