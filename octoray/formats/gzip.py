"""The gzip member format (RFC 1952) around deflate data made in independent chunks.

Chunks are compressed in parallel, each ending on a byte boundary without the final-block
bit (a sync flush).  Joining them and appending one empty final block gives a single
deflate stream, so the whole output is one gzip member, as pigz writes it.  The CRC-32 of
the whole input is combined from the chunks' CRCs.
"""

from __future__ import annotations

import struct

from isal import isal_zlib

MAGIC = b"\x1f\x8b"
METHOD_DEFLATE = 8
FLAG_TEXT, FLAG_HCRC, FLAG_EXTRA, FLAG_NAME, FLAG_COMMENT = 1, 2, 4, 8, 16
OS_UNIX = 3
FINAL_EMPTY_BLOCK = b"\x03\x00"  # BFINAL=1, fixed Huffman, end-of-block: 10 bits
"""Ends a deflate stream whose chunks all ended without a final block (an empty input)."""
DICTIONARY_SIZE = 32 * 1024

crc32 = isal_zlib.crc32
crc32_combine = isal_zlib.crc32_combine


def header(name: bytes | None = None, mtime: int = 0, level: int = 6, comment: bytes | None = None) -> bytes:
    """A member header as gzip writes it: FNAME when there is a name, XFL from the level."""
    flags = (FLAG_NAME if name else 0) | (FLAG_COMMENT if comment else 0)
    xfl = 2 if level >= 9 else 4 if level == 1 else 0
    mtime = mtime if 0 <= mtime < 2**32 else 0
    out = MAGIC + struct.pack("<BBIBB", METHOD_DEFLATE, flags, mtime, xfl, OS_UNIX)
    if name:
        out += name.replace(b"\0", b"") + b"\0"
    if comment:
        out += comment.replace(b"\0", b"") + b"\0"
    return out


def trailer(crc: int, size: int) -> bytes:
    return struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)


class DeflatedChunk:
    """Raw deflate for one chunk, plus what the trailer needs.  Only the `last` chunk of a
    stream may end the deflate stream; the others end byte-aligned (a sync flush)."""

    __slots__ = ("data", "crc", "size", "last")

    def __init__(self, data: bytes, crc: int, size: int, last: bool = False):
        self.data, self.crc, self.size, self.last = data, crc, size, last

    def __reduce__(self):  # travels to and from Dask workers
        return DeflatedChunk, (self.data, self.crc, self.size, self.last)


class MemberAssembler:
    """Joins chunks that arrive in input order into one member; tracks CRC and length."""

    def __init__(self):
        self.crc = 0
        self.size = 0
        self.compressed = 0
        self.ended = False  # the deflate stream has had its final block

    def add(self, chunk: DeflatedChunk) -> bytes:
        if self.ended:
            raise ValueError("a chunk after the last one")
        self.crc = crc32_combine(self.crc, chunk.crc, chunk.size) if self.size else chunk.crc
        self.size += chunk.size
        self.compressed += len(chunk.data)
        self.ended = chunk.last
        return chunk.data

    def finish(self) -> bytes:
        end = b"" if self.ended else FINAL_EMPTY_BLOCK
        self.compressed += len(end)
        return end + trailer(self.crc, self.size)


class MemberHeader:
    __slots__ = ("method", "flags", "mtime", "xfl", "os", "name", "comment", "length")

    def __init__(self, method, flags, mtime, xfl, os, name, comment, length):
        self.method, self.flags, self.mtime, self.xfl, self.os = method, flags, mtime, xfl, os
        self.name, self.comment = name, comment
        self.length = length  # bytes the header took


class NotGzip(Exception):
    """The data does not start with a gzip magic."""


class Truncated(Exception):
    """The data ended inside a member."""


class UnknownMethod(Exception):
    def __init__(self, method: int):
        super().__init__(method)
        self.method = method


def parse_header(buf: bytes | bytearray | memoryview) -> MemberHeader:
    """Parse a member header at the start of `buf`; raise Truncated if it needs more bytes."""
    if len(buf) < 2:
        raise Truncated if buf[:1] in (b"", MAGIC[:1]) else NotGzip
    if bytes(buf[:2]) != MAGIC:
        raise NotGzip
    if len(buf) < 10:
        raise Truncated
    method, flags, mtime, xfl, os_ = struct.unpack_from("<BBIBB", buf, 2)
    if method != METHOD_DEFLATE:
        raise UnknownMethod(method)
    pos = 10
    if flags & FLAG_EXTRA:
        if len(buf) < pos + 2:
            raise Truncated
        (xlen,) = struct.unpack_from("<H", buf, pos)
        pos += 2 + xlen
    name = comment = None
    if flags & FLAG_NAME:
        end = bytes(buf[pos:]).find(b"\0")
        if end < 0:
            raise Truncated
        name = bytes(buf[pos:pos + end])
        pos += end + 1
    if flags & FLAG_COMMENT:
        end = bytes(buf[pos:]).find(b"\0")
        if end < 0:
            raise Truncated
        comment = bytes(buf[pos:pos + end])
        pos += end + 1
    if flags & FLAG_HCRC:
        pos += 2
    if len(buf) < pos:
        raise Truncated
    return MemberHeader(method, flags, mtime, xfl, os_, name, comment, pos)
