"""A stream larger than 4 GiB, through a pipe: compressed, checked by gzip, decompressed."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys

from conftest import text_like, tool

SIZE = (1 << 32) + 123_457  # past 4 GiB: ISIZE wraps, CRC combining runs over thousands of chunks
# hashed by Python's (OpenSSL's) SHA-256: coreutils' sha256sum is several times slower, and the pipe waits on it
DIGEST = (f"{sys.executable} -c 'import hashlib, sys; h = hashlib.sha256(); "
          "[h.update(b) for b in iter(lambda: sys.stdin.buffer.read(1 << 20), b\"\")]; print(h.hexdigest())'")


def test_multi_gigabyte_stream_round_trips_through_gzip_and_fgzip(tmp_path):
    # 24 kB of text with a block counter in front: deflate reaches back into the previous
    # block, so gzip -dc (the pipe's slowest part) runs faster than on all-new text
    block = text_like(24_000, seed=9)
    fg = " ".join(tool("fgzip"))
    shell = (f"{fg} -1 | tee >(gzip -dc | {DIGEST} > {tmp_path}/by-gzip) "
             f"| {fg} -d | {DIGEST} > {tmp_path}/by-fgzip; wait $!")  # $!: the gzip -dc side
    proc = subprocess.Popen(["bash", "-o", "pipefail", "-c", shell], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    digest = hashlib.sha256()
    sent = 0
    n = 0
    pieces = []
    while sent < SIZE:
        piece = (b"%012d" % n + block)[: SIZE - sent]
        pieces.append(piece)
        sent += len(piece)
        n += 1
        if len(pieces) == 64 or sent == SIZE:  # 1.5 MB a write
            chunk = b"".join(pieces)
            digest.update(chunk)
            proc.stdin.write(chunk)
            pieces.clear()
    proc.stdin.close()
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    for name in ("by-fgzip", "by-gzip"):
        assert (tmp_path / name).read_text().split()[0] == digest.hexdigest(), name


def _bits(bits: list[int]) -> bytes:
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        out[i // 8] |= bit << (i % 8)
    return bytes(out)


# a fixed-code copy of 258 bytes at distance 1: length code 285, distance code 0 (13 bits)
_COPY = [(0b11000101 >> (7 - i)) & 1 for i in range(8)] + [0] * 5


def zero_run_member(periods: int) -> tuple[bytes, int]:
    """A gzip member whose output is b"0" * size, built in microseconds: a stored block with
    one "0", then a fixed-code block of 1 + 8 * periods copies of 258 bytes (13 bytes for each
    8 copies).  Its CRC-32 comes from combining, by doubling, that of 258 zeros."""
    from octoray.formats import gzip as gz

    head = _bits([1, 1, 0] + _COPY)  # BFINAL, BTYPE 01, the first copy: byte-aligned after it
    period = _bits(_COPY * 8)
    copies = 1 + 8 * periods
    crc, piece, piece_crc = gz.crc32(b"0"), 258, gz.crc32(b"0" * 258)
    while copies:
        if copies & 1:
            crc = gz.crc32_combine(crc, piece_crc, piece)
        piece_crc, piece, copies = gz.crc32_combine(piece_crc, piece_crc, piece), 2 * piece, copies >> 1
    size = 1 + 258 * (1 + 8 * periods)
    deflate = bytes([0, 1, 0, 0xFE, 0xFF]) + b"0" + head + period * periods + b"\0"  # then end-of-block
    return gz.header(b"zeros", 0, 9) + deflate + struct.pack("<II", crc, size & 0xFFFFFFFF), size


def test_a_member_past_4_gib_lists_its_whole_size_as_gzip_does(tmp_path):
    """gzip 1.12 -l decodes the member and shows the bytes it counted, not ISIZE's 32 bits;
    the rows below are what `gzip -lv z.gz` and `gzip -dcv z.gz` printed for this file
    (5,387,040,259 bytes; gzip takes 21 s, fgzip under 2)."""
    member, size = zero_run_member(2_610_000)
    assert size == 5_387_040_259 and size >> 32
    (tmp_path / "z.gz").write_bytes(member)
    listed = subprocess.run([*tool("fgzip"), "-l", "z.gz"], cwd=tmp_path, capture_output=True, check=True)
    assert listed.stdout.decode().splitlines()[1] == "           33930033          5387040259  99.4% z"
    decoded = subprocess.run([*tool("fgzip"), "-dcv", "z.gz"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, check=True)
    assert decoded.stderr == b"z.gz:\t 99.4% -- replaced with stdout\n"
