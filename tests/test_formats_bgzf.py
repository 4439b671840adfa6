"""The BGZF format's pure parts, in-process: cutting members by their BC sizes, and decoding a
batch of them exactly or saying which member does not decode."""

from __future__ import annotations

import struct

from hypothesis import given, settings, strategies as st

from conftest import run, text_like
from octoray.formats import bgzf

DATA = text_like(300_000, seed=42)


def cut(blob: bytes) -> list[int]:
    sizes, pos = [], 0
    while pos < len(blob):
        size = bgzf.member_size(blob, pos)
        assert size is not None and pos + size <= len(blob)
        sizes.append(size)
        pos += size
    return sizes


@settings(max_examples=40, deadline=None, derandomize=True)
@given(length=st.integers(0, 300_000), block=st.integers(1, bgzf.BLOCK), level=st.integers(0, 9))
def test_members_cut_by_their_sizes_decode_to_the_data(length, block, level):
    blob = bgzf.compress(DATA[:length], level, block)
    sizes = cut(blob)
    assert len(sizes) == -(-length // block) + 1  # and the empty end marker
    output, members, failed = bgzf.inflate_members(blob, sizes)
    assert (output, failed) == (DATA[:length], None)
    assert [size for _, size, _ in members] == [min(block, length - i) for i in range(0, length, block)] + [0]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(hit=st.integers(0, 10), offset=st.integers(0, 10**6), flip=st.integers(1, 255))
def test_a_changed_byte_in_a_members_data_or_trailer_stops_the_batch_there(hit, offset, flip):
    """Or changes nothing decoded.  (A changed header is no longer cut as a member at all:
    the test below.)"""
    blob = bytearray(bgzf.compress(DATA[:100_000], 6, 10_000))
    sizes = cut(bytes(blob))
    start = sum(sizes[:hit])
    blob[start + 18 + offset % (sizes[hit] - 18)] ^= flip
    output, members, failed = bgzf.inflate_members(bytes(blob), sizes)
    if failed is None:  # a padding bit after a block's end: gzip reads it the same
        assert output == DATA[:100_000] and run(["gzip", "-dc"], input=bytes(blob)).returncode == 0
    else:
        assert failed == hit and output == DATA[:10_000 * hit] and len(members) == hit


def test_only_a_plain_bgzf_header_is_cut():
    member = bgzf.compress(b"hello\n")
    size = bgzf.member_size(member)
    assert size == len(member) - len(bgzf.END)
    assert bgzf.member_size(member[:size - 1]) == size  # the header alone says it
    for name, broken in [
        ("a name too (FLG 0x0c)", member[:3] + b"\x0c" + member[4:]),
        ("the header cut off", member[:15]),
        ("a subfield past XLEN", member[:12] + b"BC\x09\x00" + member[16:]),
        ("BC of another length", member[:12] + b"BC\x03\x00" + member[16:]),
        ("a size too small for a header and trailer", member[:16] + struct.pack("<H", 20) + member[18:]),
        ("not gzip", b"PK\x03\x04" + member[4:]),
    ]:
        assert bgzf.member_size(broken) is None, name
    other_first = member[:10] + b"\x0a\x00XY\x00\x00BC\x02\x00" + struct.pack("<H", size + 4 - 1) + member[18:]
    assert bgzf.member_size(other_first) == size + 4  # another subfield before BC
