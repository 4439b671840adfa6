"""BGZF (htslib's bgzip, samtools, tabix: `.vcf.gz`, `.bed.gz`, ...): a gzip file of members
of at most 64 KiB, each giving its own size in a ``BC`` subfield of its header (SAMv1,
section 4.1).  Members can be cut apart without decoding, and decoded on every core.

Only what is certainly such a member is cut here (FLG is FEXTRA alone, the subfield fits its
header, the size covers a header and a trailer); everything else, and every member whose
decoding or trailer does not come out exactly right, is left to fgzip's sequential decoder,
which reports it as gzip does.
"""

from __future__ import annotations

import struct

MAGIC = b"\x1f\x8b\x08\x04"  # gzip, deflate, FLG = FEXTRA only
MAX_MEMBER = 1 << 16  # BSIZE - 1 is a 16-bit field
MAX_OUTPUT = 1 << 16  # what the format allows a member to hold (SAMv1: at most 64 KiB)


BLOCK = 65280  # input bytes in a member, as bgzip writes them
END = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")  # the empty last member


def compress(data: bytes, level: int = 6, block: int = BLOCK) -> bytes:
    """`data` as bgzip writes it (zlib at `level`, `block` bytes a member, the end marker):
    for the tests and benchmarks; fgzip itself writes its own chunked members."""
    import zlib

    members = []
    for start in range(0, len(data), block):
        piece = data[start:start + block]
        compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
        body = compressor.compress(piece) + compressor.flush()
        members.append(MAGIC + bytes(4) + b"\x00\xff\x06\x00BC\x02\x00" + struct.pack("<H", 25 + len(body))
                       + body + struct.pack("<II", zlib.crc32(piece), len(piece)))
    return b"".join(members) + END


def member_size(buffer, pos: int = 0) -> int | None:
    """The whole size (header, deflate data, trailer) of the BGZF member whose header starts at
    ``buffer[pos]``, from its ``BC`` subfield; None where no complete BGZF header is there."""
    if buffer[pos:pos + 4] != MAGIC or len(buffer) < pos + 12:
        return None
    (xlen,) = struct.unpack_from("<H", buffer, pos + 10)
    at, end = pos + 12, pos + 12 + xlen
    if len(buffer) < end:
        return None
    while at + 4 <= end:
        ident = buffer[at:at + 2]
        (length,) = struct.unpack_from("<H", buffer, at + 2)
        if at + 4 + length > end:
            return None
        if ident == b"BC" and length == 2:
            size = struct.unpack_from("<H", buffer, at + 4)[0] + 1
            return size if size >= 12 + xlen + 2 + 8 else None  # the empty deflate stream is 2 bytes
        at += 4 + length
    return None


def output_size(buffer, pos: int, size: int) -> int:
    """ISIZE of the whole member of `size` bytes at ``buffer[pos]``: what it decodes to."""
    return struct.unpack_from("<I", buffer, pos + size - 4)[0]


def inflate_members(data: bytes, sizes: list[int]) -> tuple[bytes, list[tuple[int, int, int]], int | None]:
    """Decode the members that follow each other in `data` (`sizes`: their whole sizes):
    (their output, [(CRC-32, length, MTIME)] a member, None), or the same for the members
    before the first one that does not decode exactly (its stream ends before or after its
    trailer, or the trailer's CRC or length differ) and that one's index, for the sequential
    decoder to report."""
    from isal import igzip_lib, isal_zlib

    from octoray.formats.gzip import GZIP_START_WINDOW

    outputs, members, pos = [], [], 0
    view = memoryview(data)
    for index, size in enumerate(sizes):
        (mtime,) = struct.unpack_from("<I", data, pos + 4)
        (xlen,) = struct.unpack_from("<H", data, pos + 10)
        crc_stored, length = struct.unpack_from("<II", data, pos + size - 8)
        inflater = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_DEFLATE, zdict=GZIP_START_WINDOW)
        try:
            out = inflater.decompress(view[pos + 12 + xlen:pos + size - 8], length + 1)
        except igzip_lib.IsalError:
            return b"".join(outputs), members, index
        crc = isal_zlib.crc32(out)
        if not inflater.eof or inflater.unused_data or len(out) != length or crc != crc_stored:
            return b"".join(outputs), members, index
        outputs.append(out)
        members.append((crc, length, mtime))
        pos += size
    return b"".join(outputs), members, None
