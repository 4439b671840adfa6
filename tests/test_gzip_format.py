"""Property tests for the gzip member writer: any data in any chunking gunzips to the input."""

from __future__ import annotations

import gzip
import subprocess
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from octoray.formats import gzip as gz
from octoray.kernels.cpu import GZIP_LEVELS, deflate_chunk

from chunked_members import primed_chunk


def assemble(data: bytes, cuts: list[int], level: int, carry_dictionary: bool, end_with_final: bool = True,
             name=None, mtime=0) -> bytes:
    bounds = sorted({0, len(data), *[c % (len(data) + 1) for c in cuts]})
    out = [gz.header(name, mtime, level)]
    assembler = gz.MemberAssembler()
    previous = None
    pieces = list(zip(bounds, bounds[1:]))
    for i, (start, end) in enumerate(pieces):
        piece = data[start:end]
        last = end_with_final and i == len(pieces) - 1
        deflated = primed_chunk(piece, previous, level, last) if carry_dictionary else deflate_chunk(piece, level, last)
        out.append(assembler.add(gz.DeflatedChunk(deflated, gz.crc32(piece), len(piece), last)))
        if carry_dictionary:
            previous = data[max(0, end - gz.DICTIONARY_SIZE):end]
    out.append(assembler.finish())
    return b"".join(out)


chunky_data = st.one_of(
    st.binary(max_size=5000),
    st.builds(lambda unit, n: unit * n, st.binary(min_size=1, max_size=40), st.integers(0, 3000)),
)


@settings(max_examples=150, deadline=None)
@given(data=chunky_data, cuts=st.lists(st.integers(0, 10**6), max_size=8),
       level=st.sampled_from(sorted(GZIP_LEVELS)),
       carry=st.booleans(), end_with_final=st.booleans())
def test_any_chunking_gunzips_to_the_input(data, cuts, level, carry, end_with_final):
    member = assemble(data, cuts, level, carry, end_with_final)
    assert gzip.decompress(member) == data
    d = zlib.decompressobj(31)
    assert d.decompress(member) == data and d.eof and not d.unused_data


@settings(max_examples=50, deadline=None)
@given(name=st.binary(min_size=1, max_size=30).filter(lambda b: b"\0" not in b),
       mtime=st.integers(0, 2**32 - 1), level=st.integers(1, 9))
def test_header_round_trips_through_the_parser(name, mtime, level):
    parsed = gz.parse_header(gz.header(name, mtime, level) + b"rest")
    assert (parsed.name, parsed.mtime, parsed.method, parsed.os) == (name, mtime, 8, 3)
    assert parsed.xfl == (2 if level == 9 else 4 if level == 1 else 0)
    assert parsed.length == 10 + len(name) + 1


@pytest.mark.parametrize("level", [1, 3, 6, 9, 11])
def test_a_tiny_input_deflates_no_larger_than_gzips(gzip_bin, level):
    """libdeflate stores inputs of up to ~55 bytes and ISA-L's smallest blocks are longer than
    zlib's: a tiny file's fgzip output would otherwise be a few bytes longer than gzip's."""
    text = b"octoray splits an input stream into chunks and writes the results in input order. " * 4
    for size in (1, 2, 10, 20, 55, 100, 256):
        piece = text[:size]
        ours = deflate_chunk(piece, level, True)
        theirs = subprocess.run([gzip_bin, f"-{min(level, 9)}", "-n"], input=piece, capture_output=True,
                                check=True).stdout
        assert zlib.decompress(ours, -15) == piece
        assert len(ours) <= len(theirs) - 18  # gzip's 10-byte header and 8-byte trailer


def test_crc_is_combined_across_chunks():
    data = bytes(range(256)) * 1000
    member = assemble(data, [1, 70_000, 200_000], 6, True)
    assert int.from_bytes(member[-8:-4], "little") == zlib.crc32(data)
    assert int.from_bytes(member[-4:], "little") == len(data)


# --- the block walk that makes libdeflate's streams joinable (formats/_deflate_blocks.c) ---

def walk(stream: bytes) -> tuple[int, int]:
    from octoray.formats.deflate_join import WALK_PADDING, final_block_bits

    return final_block_bits(bytearray(stream) + bytes(WALK_PADDING), len(stream))


@settings(max_examples=60, deadline=None)
@given(head=chunky_data, tail=st.binary(min_size=0, max_size=200),
       level=st.integers(0, 9), strategy=st.sampled_from([zlib.Z_DEFAULT_STRATEGY, zlib.Z_FIXED,
                                                          zlib.Z_HUFFMAN_ONLY, zlib.Z_RLE]))
def test_the_walk_finds_the_final_block_where_zlib_put_it(head, tail, level, strategy):
    """zlib after a full flush starts a new block on a byte boundary; a short tail then makes
    one final block (stored, fixed or dynamic), so its start is known exactly."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15, 9, strategy)
    flushed = compressor.compress(head) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = flushed + compressor.compress(tail) + compressor.flush(zlib.Z_FINISH)
    start, end = walk(stream)
    assert start == 8 * len(flushed)
    assert 8 * len(stream) - 8 < end <= 8 * len(stream)


@settings(max_examples=60, deadline=None)
@given(first=chunky_data, second=chunky_data, level=st.integers(0, 12))
def test_an_unfinished_libdeflate_stream_joins_the_next(first, second, level):
    import deflate

    from octoray.formats.deflate_join import unfinish

    joined = unfinish(deflate.deflate_compress(first, level)) + deflate.deflate_compress(second, level)
    d = zlib.decompressobj(-15)
    assert d.decompress(joined) == first + second and d.eof and not d.unused_data


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(max_size=3000))
def test_the_walk_refuses_what_is_not_one_complete_stream(junk):
    """Random bytes give ValueError, or (rarely: they can be valid deflate) block bounds
    inside the data; never a crash or another error."""
    try:
        start, end = walk(junk)
    except ValueError:
        return
    assert 0 <= start < end <= 8 * len(junk)


def test_the_walk_refuses_a_truncated_stream_and_a_short_buffer():
    import deflate
    import pytest

    from octoray.formats.deflate_join import final_block_bits

    stream = deflate.deflate_compress(bytes(range(256)) * 400 + b"tail" * 999, 6)
    for cut in (1, 2, len(stream) // 2, len(stream) - 1):
        with pytest.raises(ValueError):
            walk(stream[:cut])
    with pytest.raises(ValueError, match="bytes more"):
        final_block_bits(bytearray(stream), len(stream))
    with pytest.raises(ValueError):
        walk(b"")
