"""The first entry of a zip file, read as `gzip -d` and `pigz -d` read it (`pigz -K` output).

gzip reads a zip only at the very start of its input, and only its first entry, deflated or
stored; the rest of the file (the central directory) is left unread.  Its verdicts are
followed here.  Where an entry's sizes and CRC follow its data (a data descriptor, flag bit 3), gzip
assumes the 16-byte form with a signature and misreads the zip64 form that pigz -K writes
("length error"); pigz tells the forms apart, with or without signature, 32- or 64-bit
sizes, and so does fgzip; so are 64-bit sizes in a zip64 extra field (Info-ZIP's `zip`
reading a pipe writes them; gzip again says "length error").  A second local header right
after the entry is reported (`more_entries`): gzip then warns under -c ("has more than one entry--rest ignored", status 2)
and otherwise refuses to replace the zip ("has more than one entry -- unchanged", status 1).
"""

from __future__ import annotations

import struct

from isal import isal_zlib

from octoray.formats import faults
from octoray.formats.raw_inflate import Input, inflate

MAGIC = b"PK\x03\x04"
LOCAL_SIZE = 30
DESCRIPTOR_SIGNATURE = 0x08074B50
FLAG_ENCRYPTED, FLAG_DESCRIPTOR = 1, 8
STORED, DEFLATED = 0, 8
ZIP64_EXTRA = 0x0001

class LocalHeader:
    """The fields of a local file header that decoding needs."""

    __slots__ = ("flags", "method", "mtime_dos", "crc", "compressed", "size", "name", "zip64", "length",
                 "fields")

    def __init__(self, flags, method, mtime_dos, crc, compressed, size, name, zip64, length, fields):
        self.flags, self.method, self.mtime_dos = flags, method, mtime_dos
        self.crc, self.compressed, self.size = crc, compressed, size
        self.name, self.zip64, self.length = name, zip64, length
        self.fields = fields  # (size, compressed size) as the header's 32-bit fields hold them

    @property
    def descriptor(self) -> bool:
        return bool(self.flags & FLAG_DESCRIPTOR)


def parse_local_header(buf: bytes) -> LocalHeader:
    """The header at the start of `buf`; faults.ZipNotValid, ZipMethod or ZipEncrypted where
    gzip refuses it (cut short, a method other than deflate or stored, encrypted)."""
    if len(buf) < LOCAL_SIZE or buf[:4] != MAGIC:
        raise faults.ZipNotValid()
    (flags, method, clock, day, crc, compressed, size, name_length,
     extra_length) = struct.unpack_from("<HHHHIIIHH", buf, 6)
    length = LOCAL_SIZE + name_length + extra_length
    if len(buf) < length:
        raise faults.ZipNotValid()
    method &= 0xFF  # gzip looks at the low byte only
    if method not in (STORED, DEFLATED):
        raise faults.ZipMethod()
    if flags & FLAG_ENCRYPTED:
        raise faults.ZipEncrypted()
    fields = (size, compressed)
    name = bytes(buf[LOCAL_SIZE:LOCAL_SIZE + name_length])
    zip64 = _zip64_field(bytes(buf[LOCAL_SIZE + name_length:length]))
    if zip64 is not None:  # 64-bit sizes stand in for fields of 0xffffffff, low halves compared
        if size == 0xFFFFFFFF and len(zip64) >= 8:
            size, zip64 = struct.unpack_from("<I", zip64)[0], zip64[8:]
        if compressed == 0xFFFFFFFF and len(zip64) >= 8:
            compressed = struct.unpack_from("<I", zip64)[0]
    return LocalHeader(flags, method, day << 16 | clock, crc, compressed, size, name, zip64 is not None, length,
                       fields)


def _zip64_field(extra: bytes) -> bytes | None:
    """The data of the zip64 extended information block of an extra field, if it has one."""
    pos = 0
    while pos + 4 <= len(extra):
        ident, size = struct.unpack_from("<HH", extra, pos)
        if pos + 4 + size > len(extra):
            break
        if ident == ZIP64_EXTRA:
            return extra[pos + 4:pos + 4 + size]
        pos += 4 + size
    return None


class Decoded:
    """The entry decoded: its header, bytes out, whether another entry follows, and the input
    read past the entry (then whatever the caller's `pieces` still yields)."""

    __slots__ = ("header", "size", "more_entries", "unused")

    def __init__(self, header: LocalHeader, size: int, more_entries: bool, unused: bytes):
        self.header, self.size, self.more_entries, self.unused = header, size, more_entries, unused


def decode(pieces, write, header_limit: int = 1 << 16) -> Decoded:
    """Decode the first entry of the zip file that `pieces` starts with, to `write`.
    Raises faults.ZipNotValid, ZipMethod, ZipEncrypted, StoredLengthMismatch (before any
    output), UnexpectedEnd, CorruptData, CrcMismatch or LengthMismatch."""
    source = Input(iter(pieces))
    head = source.read(LOCAL_SIZE)
    if len(head) == LOCAL_SIZE and head[:4] == MAGIC:
        head += source.read(min(header_limit, struct.unpack_from("<H", head, 26)[0]
                                + struct.unpack_from("<H", head, 28)[0]))
    header = parse_local_header(head)
    source.unread(head[header.length:])
    if header.method == DEFLATED:
        size, crc = inflate(source, write, isal_zlib.crc32, 0)
        compressed = source.consumed - header.length
    else:
        if header.size != header.compressed:
            raise faults.StoredLengthMismatch(*header.fields)
        size, crc = _copy(source, write, header.size)
        compressed = size
    expected_crc, expected_compressed, expected_size = header.crc, header.compressed, header.size
    if header.descriptor:
        expected_crc, expected_compressed, expected_size = _descriptor(source, header.zip64, crc, compressed, size)
    if expected_crc != crc & 0xFFFFFFFF:
        raise faults.CrcMismatch()
    if expected_size != size & 0xFFFFFFFF:
        raise faults.LengthMismatch()
    following = source.read(5)  # gzip looks for the next signature only with a byte beyond it
    return Decoded(header, size, len(following) == 5 and following[:4] == MAGIC, following + source.held)


def _copy(source: Input, write, size: int) -> tuple[int, int]:
    crc, left = 0, size
    while left:
        piece = source.next_piece()
        if not piece:
            raise faults.UnexpectedEnd()
        piece, extra = piece[:left], piece[left:]
        source.unread(extra)
        crc = isal_zlib.crc32(piece, crc)
        write(piece)
        left -= len(piece)
    return size, crc


def _descriptor(source: Input, zip64: bool, crc: int, compressed: int, size: int) -> tuple[int, int, int]:
    """(crc, compressed size, size) from the data descriptor, with or without its signature,
    with 64-bit sizes after a zip64 header (pigz's reading; only the low 32 bits are
    compared).  The signature is told from a CRC equal to it the way pigz does."""
    words = list(struct.unpack("<3I", _exactly(source, 12)))
    if words[0] == DESCRIPTOR_SIGNATURE and (
            crc != DESCRIPTOR_SIGNATURE
            or (words[1] == DESCRIPTOR_SIGNATURE
                and ((compressed & 0xFFFFFFFF) != DESCRIPTOR_SIGNATURE
                     or (words[2] == DESCRIPTOR_SIGNATURE
                         and ((compressed >> 32) if zip64 else size & 0xFFFFFFFF) != DESCRIPTOR_SIGNATURE)))):
        words = words[1:] + list(struct.unpack("<I", _exactly(source, 4)))
    if zip64:  # words[2] was the compressed size's high half
        words[2] = struct.unpack("<I", _exactly(source, 8)[:4])[0]
    return words[0], words[1], words[2]


def _exactly(source: Input, n: int) -> bytes:
    data = source.read(n)
    if len(data) < n:
        raise faults.UnexpectedEnd()
    return data
