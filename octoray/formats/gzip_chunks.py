"""Chunked gzip members: one ordinary gzip member that fgzip can decode on every core.

The member's deflate stream is a run of chunks.  Each chunk but the last holds `chunk_size`
bytes of input (at most that many in a VARIABLE layout), refers to nothing before its own
start, and ends byte-aligned with an empty stored block, the marker 00 00 ff ff (what a sync
flush writes).  The last chunk ends the stream.  A subfield of the header's extra field
(RFC 1952 FEXTRA) announces this, so gzip, pigz, zlib and Python, which skip subfields they
do not know, read the member as before, and `gzip -l` stays right (CRC and ISIZE are the
whole member's).

Subfield ID 'F' 'G' (fgzip).  Its data, little-endian:

    offset  size  field
    0       1     version, 1
    1       1     flags: bit 0 VARIABLE (chunks hold at most chunk_size bytes); others 0
    2       4     chunk_size: bytes of input per chunk, 1 .. 2**32-1
    6       4*n   index (optional): compressed size of chunk 0, 1, ... n-1, marker included;
                  the last chunk's size runs to the end of the deflate stream.  A 0 entry
                  means "not recorded": it and the entries after it are ignored.

A writer that knows the input size and can seek back in its output reserves one index entry
per chunk (`index_slots`) and writes the sizes at the end (`index_bytes` at the offset
`header` returns; the header has no FHCRC, which the rewrite would break); where it cannot (a
pipe), it writes no index, and a reader finds chunk ends by scanning for the marker
(`find_marker`).  Either way a reader must treat chunk ends as
candidates and verify them by decoding (octoray.formats.chunk_inflate): a header is input,
and input can lie.
"""

from __future__ import annotations

import struct

from octoray.formats import gzip as gz
from octoray.formats._chunks import find_marker  # noqa: F401 - part of this module's API

SUBFIELD_ID = b"FG"
VERSION = 1
FLAG_VARIABLE = 1
MARKER = b"\x00\x00\xff\xff"
"""An empty stored block: ends every chunk but the last."""
_FIXED = struct.Struct("<BBI")  # version, flags, chunk_size
MAX_XLEN = 0xFFFF
MAX_SLOTS = (MAX_XLEN - 4 - _FIXED.size) // 4
"""Index entries one header can hold (16 GiB of input at 1 MiB chunks); later chunks are found
by scanning."""


class ChunkLayout:
    """What a member's subfield announces: the chunk size, whether chunks hold at most that
    much (VARIABLE), and the recorded compressed sizes of the first chunks (no zeros).  A
    plain class: fgzip -d imports this module, and a dataclass or a named tuple (collections)
    costs its start-up milliseconds."""

    __slots__ = ("chunk_size", "variable", "sizes")

    def __init__(self, chunk_size: int, variable: bool = False, sizes: tuple = ()):
        self.chunk_size, self.variable, self.sizes = chunk_size, variable, sizes

    def _fields(self) -> tuple:
        return self.chunk_size, self.variable, self.sizes

    def __eq__(self, other) -> bool:
        return isinstance(other, ChunkLayout) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"ChunkLayout(chunk_size={self.chunk_size}, variable={self.variable}, sizes={self.sizes})"


def index_slots(input_size: int | None, chunk_size: int) -> int:
    """Index entries to reserve for an input of `input_size` bytes (None: unknown, none)."""
    if input_size is None or input_size < 0:
        return 0
    return min(MAX_SLOTS, max(1, -(-input_size // chunk_size)))


def subfield(chunk_size: int, slots: int = 0, variable: bool = False) -> bytes:
    """The 'FG' subfield with `slots` zeroed index entries, ready to be filled in later."""
    if not 0 < chunk_size < 2**32:
        raise ValueError(f"chunk size {chunk_size} out of range")
    if not 0 <= slots <= MAX_SLOTS:
        raise ValueError(f"{slots} index slots: at most {MAX_SLOTS}")
    data = _FIXED.pack(VERSION, FLAG_VARIABLE if variable else 0, chunk_size) + bytes(4 * slots)
    return SUBFIELD_ID + struct.pack("<H", len(data)) + data


def header(name: bytes | None = None, mtime: int = 0, level: int = 6, comment: bytes | None = None, *,
           chunk_size: int, slots: int = 0, variable: bool = False) -> tuple[bytes, int]:
    """A member header as gzip.header writes it, plus the extra field announcing the layout.

    Returns the header and the offset, inside it, of the index entries (for `index_bytes`)."""
    plain = gz.header(name, mtime, level, comment)
    extra = subfield(chunk_size, slots, variable)
    out = (plain[:3] + bytes((plain[3] | gz.FLAG_EXTRA,)) + plain[4:10]
           + struct.pack("<H", len(extra)) + extra + plain[10:])
    return out, 10 + 2 + 4 + _FIXED.size


def index_bytes(sizes, slots: int) -> bytes:
    """The index entries to write over the reserved ones: the first `slots` sizes, zero-padded.
    A size that does not fit 32 bits ends the index there (readers then scan)."""
    entries = []
    for size in list(sizes)[:slots]:
        if not 0 < size < 2**32:
            break
        entries.append(size)
    return struct.pack(f"<{len(entries)}I", *entries) + bytes(4 * (slots - len(entries)))


def extra_field(member: bytes | bytearray | memoryview) -> bytes | None:
    """The raw extra field of the member header at the start of `member`, or None (no FEXTRA,
    not gzip, or cut short)."""
    if len(member) < 12 or bytes(member[:2]) != gz.MAGIC or not member[3] & gz.FLAG_EXTRA:
        return None
    (xlen,) = struct.unpack_from("<H", member, 10)
    if len(member) < 12 + xlen:
        return None
    return bytes(member[12:12 + xlen])


def parse_layout(member: bytes | bytearray | memoryview) -> ChunkLayout | None:
    """The layout announced by the header at the start of `member`, or None where there is
    none, or it is malformed, or of a later version (such members decode sequentially)."""
    extra = extra_field(member)
    pos = 0
    while extra is not None and pos + 4 <= len(extra):
        ident = extra[pos:pos + 2]
        (length,) = struct.unpack_from("<H", extra, pos + 2)
        data = extra[pos + 4:pos + 4 + length]
        if len(data) < length:
            return None  # subfields overrun the field: not a list of subfields after all
        if ident == SUBFIELD_ID:
            return _layout(data)
        pos += 4 + length
    return None


def _layout(data: bytes) -> ChunkLayout | None:
    if len(data) < _FIXED.size or (len(data) - _FIXED.size) % 4:
        return None
    version, flags, chunk_size = _FIXED.unpack_from(data)
    if version != VERSION or flags & ~FLAG_VARIABLE or chunk_size == 0:
        return None
    count = (len(data) - _FIXED.size) // 4
    sizes = struct.unpack_from(f"<{count}I", data, _FIXED.size)
    recorded = sizes.index(0) if 0 in sizes else count
    return ChunkLayout(chunk_size, bool(flags & FLAG_VARIABLE), tuple(sizes[:recorded]))


def max_compressed(chunk_size: int) -> int:
    """Bytes a chunk of `chunk_size` input bytes takes at most as fgzip's encoders write it
    (stored blocks cost 5 bytes per 64 KiB), with room to spare.  Past it, a reader stops
    looking for the chunk's end and decodes sequentially: a bound on its read-ahead."""
    return chunk_size + (chunk_size >> 8) + 4096
