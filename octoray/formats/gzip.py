"""The gzip member format (RFC 1952) around deflate data made in independent chunks.

Chunks are compressed in parallel, each ending on a byte boundary without the final-block
bit (a sync flush).  Joining them and appending one empty final block gives a single
deflate stream, so the whole output is one gzip member, as pigz writes it.  The CRC-32 of
the whole input is combined from the chunks' CRCs.
"""

from __future__ import annotations

import struct

from isal import isal_zlib

from octoray.formats import faults

MAGIC = b"\x1f\x8b"
METHOD_DEFLATE = 8
FLAG_TEXT, FLAG_HCRC, FLAG_EXTRA, FLAG_NAME, FLAG_COMMENT = 1, 2, 4, 8, 16
OS_UNIX = 3
FINAL_EMPTY_BLOCK = b"\x03\x00"  # BFINAL=1, fixed Huffman, end-of-block: 10 bits
"""Ends a deflate stream whose chunks all ended byte-aligned without a final block."""
SYNC_FLUSH_TAIL = b"\x00\x00\xff\xff"
"""How a chunk ends after a sync flush: an empty stored block's LEN and NLEN, byte-aligned."""
DICTIONARY_SIZE = 32 * 1024
GZIP_START_WINDOW = bytes(DICTIONARY_SIZE)
"""What gzip's inflater holds before a member's first byte: zeros.  A damaged stream whose
distance reaches back past its start decodes against them in gzip, which then reports a CRC
(and length) error, where zlib and ISA-L say "invalid distance too far back"; with this as the
preset dictionary, fgzip decodes and reports as gzip does (sound streams never reach there)."""

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


def check_trailer(stored, crc: int, size: int) -> None:
    """Raise the fault for a member whose output (`crc`, `size`) differs from its 8-byte
    trailer `stored`; gzip checks both and reports both where both differ."""
    expected_crc, expected_size = struct.unpack("<II", stored)
    crc_wrong, size_wrong = expected_crc != crc, expected_size != size & 0xFFFFFFFF
    if crc_wrong and size_wrong:
        raise faults.CrcAndLengthMismatch
    if crc_wrong:
        raise faults.CrcMismatch
    if size_wrong:
        raise faults.LengthMismatch


def zlib_header(level: int) -> bytes:
    """RFC 1950 header as pigz -z writes it: 32 KiB window, FLEVEL from the level, FCHECK."""
    flevel = 0 if level <= 1 else 1 if level <= 5 else 2 if level == 6 else 3
    cmf, flg = 0x78, flevel << 6
    flg += 31 - ((cmf << 8) + flg) % 31
    return bytes((cmf, flg))


ZIP_LOCAL, ZIP_DESCRIPTOR, ZIP_CENTRAL, ZIP_END = 0x04034B50, 0x08074B50, 0x02014B50, 0x06054B50
ZIP_DESCRIPTOR_FLAG = 8  # sizes and CRC follow the data: the output is written in one pass


def _dos_time(mtime: int) -> tuple[int, int]:
    import time

    t = time.localtime(max(mtime, 315532800))  # zip's clock starts in 1980
    return (t.tm_hour << 11 | t.tm_min << 5 | t.tm_sec // 2,
            max(t.tm_year - 1980, 0) << 9 | t.tm_mon << 5 | t.tm_mday)


def zip_local_header(name: bytes, mtime: int) -> bytes:
    """A one-entry zip's local header (pigz -K), its CRC and sizes left to the descriptor."""
    clock, day = _dos_time(mtime)
    return struct.pack("<IHHHHHIIIHH", ZIP_LOCAL, 20, ZIP_DESCRIPTOR_FLAG, METHOD_DEFLATE, clock, day,
                       0, 0, 0, len(name), 0) + name


class ZipTooLarge(ValueError):
    """The entry needs zip64, which fgzip -K does not write."""


def zip_trailer(name: bytes, mtime: int, crc: int, compressed: int, size: int, header_size: int,
                mode: int = 0o644, comment: bytes | None = None) -> bytes:
    """Data descriptor, central directory and end record after the entry's deflate data."""
    if max(compressed, size, header_size + compressed + 16) >= 0xFFFFFFFF:
        raise ZipTooLarge("input too large for zip without zip64")
    clock, day = _dos_time(mtime)
    comment = comment or b""
    descriptor = struct.pack("<IIII", ZIP_DESCRIPTOR, crc & 0xFFFFFFFF, compressed, size)
    central = struct.pack("<IHHHHHHIIIHHHHHII", ZIP_CENTRAL, 0x0300 | 20, 20, ZIP_DESCRIPTOR_FLAG,
                          METHOD_DEFLATE, clock, day, crc & 0xFFFFFFFF, compressed, size, len(name), 0,
                          len(comment), 0, 0, (0o100000 | mode) << 16, 0) + name + comment
    offset = header_size + compressed + len(descriptor)
    end = struct.pack("<IHHHHIIH", ZIP_END, 0, 0, 1, 1, len(central), offset, 0)
    return descriptor + central + end


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

    def finish_stream(self) -> bytes:
        """What ends the deflate stream: nothing if the last chunk did, else an empty final block."""
        end = b"" if self.ended else FINAL_EMPTY_BLOCK
        self.ended = True
        self.compressed += len(end)
        return end

    def finish(self) -> bytes:
        return self.finish_stream() + trailer(self.crc, self.size)


class MemberHeader:
    __slots__ = ("method", "flags", "mtime", "xfl", "os", "name", "comment", "length")

    def __init__(self, method, flags, mtime, xfl, os, name, comment, length):
        self.method, self.flags, self.mtime, self.xfl, self.os = method, flags, mtime, xfl, os
        self.name, self.comment = name, comment
        self.length = length  # bytes the header took


class Truncated(Exception):
    """`buf` ends inside the header: read more and parse again."""


FLAG_ENCRYPTED, FLAGS_RESERVED = 0x20, 0xC0


def header_start_fault(buf) -> faults.HeaderFault | None:
    """What gzip refuses in a header that starts with the magic, as soon as the bytes it
    needs are there: the method (byte 2), then the flags (byte 3)."""
    if len(buf) >= 3 and buf[2] != METHOD_DEFLATE:
        return faults.UnknownMethod(buf[2])
    if len(buf) >= 4:
        if buf[3] & FLAG_ENCRYPTED:
            return faults.Encrypted()
        if buf[3] & FLAGS_RESERVED:
            return faults.ReservedFlags(buf[3])
    return None


def header_crc_fault(buf, header: MemberHeader) -> faults.HeaderChecksum | None:
    """A stored header CRC (FHCRC) that does not match the header."""
    if not header.flags & FLAG_HCRC:
        return None
    stored = int.from_bytes(bytes(buf[header.length - 2:header.length]), "little")
    computed = crc32(bytes(buf[:header.length - 2])) & 0xFFFF
    return faults.HeaderChecksum(stored, computed) if stored != computed else None


def _zero_terminated(buf, pos: int) -> tuple[bytes, int]:
    """The zero-terminated field at `pos` and the position after it; Truncated without its
    zero.  Looked for in growing pieces: a name is short, what follows it may be megabytes."""
    window = 256
    while True:
        piece = bytes(buf[pos:pos + window])
        end = piece.find(b"\0")
        if end >= 0:
            return piece[:end], pos + end + 1
        if pos + window >= len(buf):
            raise Truncated
        window *= 16


def parse_header(buf: bytes | bytearray | memoryview) -> MemberHeader:
    """Parse a member header at the start of `buf`; raise Truncated if it needs more bytes,
    faults.NotCompressed without the magic, faults.UnknownMethod for another method."""
    if len(buf) < 2:
        if buf[:1] in (b"", MAGIC[:1]):
            raise Truncated
        raise faults.NotCompressed
    if bytes(buf[:2]) != MAGIC:
        raise faults.NotCompressed
    if len(buf) < 10:
        raise Truncated
    method, flags, mtime, xfl, os_ = struct.unpack_from("<BBIBB", buf, 2)
    if method != METHOD_DEFLATE:
        raise faults.UnknownMethod(method)
    pos = 10
    if flags & FLAG_EXTRA:
        if len(buf) < pos + 2:
            raise Truncated
        (xlen,) = struct.unpack_from("<H", buf, pos)
        pos += 2 + xlen
    name = comment = None
    if flags & FLAG_NAME:
        name, pos = _zero_terminated(buf, pos)
    if flags & FLAG_COMMENT:
        comment, pos = _zero_terminated(buf, pos)
    if flags & FLAG_HCRC:
        pos += 2
    if len(buf) < pos:
        raise Truncated
    return MemberHeader(method, flags, mtime, xfl, os_, name, comment, pos)
