"""The chunked member format: its header subfield and index, what other readers make of it,
the marker scan, and the chunk verifier (any data, any chunk size, a cut at any byte)."""

from __future__ import annotations

import gzip
import random
import subprocess
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from chunked_members import chunked_member, deflated_chunks
from conftest import text_like
from deflate_walk import walk
from octoray.formats import gzip as gz
from octoray.formats import gzip_chunks
from octoray.formats import chunk_inflate
from octoray.formats.chunk_inflate import PROBE, inflate_chunk_isal

assert chunk_inflate._libdeflate_inflate is not None, "libdeflate from the deflate package should bind"
VERIFIERS = {"libdeflate": chunk_inflate.inflate_chunk, "isa-l": inflate_chunk_isal}
both_verifiers = pytest.mark.parametrize("inflate_chunk", list(VERIFIERS.values()), ids=list(VERIFIERS))

data_of_any_kind = st.one_of(
    st.binary(max_size=6000),
    st.builds(lambda unit, n: unit * n, st.binary(min_size=1, max_size=30), st.integers(0, 2000)),
    st.builds(lambda n, seed: text_like(n, seed), st.integers(0, 20000), st.integers(0, 5)),
)


# --- the header --------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(chunk_size=st.integers(1, 2**32 - 1), sizes=st.lists(st.integers(1, 2**32 - 1), max_size=40),
       spare=st.integers(0, 5), variable=st.booleans(),
       name=st.none() | st.binary(min_size=1, max_size=20).filter(lambda b: b"\0" not in b),
       comment=st.none() | st.binary(min_size=1, max_size=20).filter(lambda b: b"\0" not in b))
def test_layout_round_trips_through_the_header(chunk_size, sizes, spare, variable, name, comment):
    slots = len(sizes) + spare
    head, at = gzip_chunks.header(name, 7, 6, comment, chunk_size=chunk_size, slots=slots, variable=variable)
    patched = head[:at] + gzip_chunks.index_bytes(sizes, slots) + head[at + 4 * slots:]
    assert len(patched) == len(head)
    layout = gzip_chunks.parse_layout(patched + b"deflate data")
    assert layout == gzip_chunks.ChunkLayout(chunk_size, variable, tuple(sizes))
    parsed = gz.parse_header(patched + b"rest")
    assert (parsed.name, parsed.comment, parsed.mtime, parsed.length) == (name, comment, 7, len(head))
    assert gzip_chunks.parse_layout(gz.header(name, 7, 6, comment)) is None  # a plain header: none


@settings(max_examples=300, deadline=None)
@given(extra=st.binary(max_size=80), tail=st.binary(max_size=10))
def test_any_extra_field_parses_without_error(extra, tail):
    member = b"\x1f\x8b\x08\x04" + bytes(6) + len(extra).to_bytes(2, "little") + extra + tail
    layout = gzip_chunks.parse_layout(member)
    assert layout is None or (layout.chunk_size > 0 and 0 not in layout.sizes)
    for cut in range(12 + len(extra)):  # a header cut short announces nothing
        assert gzip_chunks.parse_layout(member[:cut]) is None


def test_subfields_of_other_writers_are_passed_over():
    ours = gzip_chunks.subfield(4096, 2)
    extra = b"AP\x03\x00abc" + ours + b"BC\x02\x00\x10\x00"
    member = b"\x1f\x8b\x08\x04" + bytes(6) + len(extra).to_bytes(2, "little") + extra
    assert gzip_chunks.parse_layout(member) == gzip_chunks.ChunkLayout(4096)


@pytest.mark.parametrize("change", [
    lambda d: bytes([2]) + d[1:],  # a later version: decoded sequentially
    lambda d: d[:1] + bytes([4]) + d[2:],  # an unknown flag
    lambda d: d[:2] + bytes(4) + d[6:],  # chunk size 0
    lambda d: d + b"\x01",  # not whole index entries
    lambda d: d[:5],  # too short
])
def test_a_malformed_subfield_announces_nothing(change):
    data = change(gzip_chunks.subfield(1 << 20, 2)[4:])
    extra = b"FG" + len(data).to_bytes(2, "little") + data
    member = b"\x1f\x8b\x08\x04" + bytes(6) + len(extra).to_bytes(2, "little") + extra
    assert gzip_chunks.parse_layout(member) is None


def test_index_slots_and_bytes():
    assert gzip_chunks.index_slots(None, 1 << 20) == 0
    assert gzip_chunks.index_slots(0, 1 << 20) == 1  # an empty input is one (empty) chunk
    assert gzip_chunks.index_slots((1 << 20) + 1, 1 << 20) == 2
    assert gzip_chunks.index_slots(1 << 50, 1 << 20) == gzip_chunks.MAX_SLOTS
    assert len(gzip_chunks.subfield(1, gzip_chunks.MAX_SLOTS)) + 2 <= 0xFFFF + 2
    assert gzip_chunks.index_bytes([5, 6, 7], 2) == bytes([5, 0, 0, 0, 6, 0, 0, 0])
    assert gzip_chunks.index_bytes([5, 2**32, 7], 3) == bytes([5, 0, 0, 0]) + bytes(8)
    with pytest.raises(ValueError):
        gzip_chunks.subfield(0)
    with pytest.raises(ValueError):
        gzip_chunks.subfield(1, gzip_chunks.MAX_SLOTS + 1)


# --- what every other reader makes of it ---------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(data=data_of_any_kind, chunk_size=st.integers(1, 3000), level=st.integers(1, 9), index=st.booleans())
def test_python_gzip_and_zlib_read_chunked_members(data, chunk_size, level, index):
    member = chunked_member(data, chunk_size, level=level, index=index)
    assert gzip.decompress(member) == data
    inflater = zlib.decompressobj(31)
    assert inflater.decompress(member) == data and inflater.eof and not inflater.unused_data


@pytest.mark.parametrize("index", [True, False])
def test_gzip_and_pigz_test_and_list_chunked_members(tmp_path, gzip_bin, pigz_bin, index):
    data = text_like(3_000_000, 1)
    path = tmp_path / "a.gz"
    path.write_bytes(chunked_member(data, 1 << 18, index=index, name=b"a"))
    for argv in ([gzip_bin, "-t", path], [pigz_bin, "-t", path]):
        assert subprocess.run(argv, capture_output=True).returncode == 0
    for reader in (gzip_bin, pigz_bin):
        out = subprocess.run([reader, "-dc", path], capture_output=True, check=True)
        assert out.stdout == data and not out.stderr
    listed = subprocess.run([gzip_bin, "-l", path], capture_output=True, check=True).stdout.split()
    assert int(listed[-3]) == len(data) and int(listed[-4]) == path.stat().st_size
    listed = subprocess.run([pigz_bin, "-l", path], capture_output=True, check=True).stdout.split()
    assert int(listed[-3]) == len(data)


# --- the marker scan ------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(data=st.lists(st.sampled_from([b"\x00", b"\xff", b"\x00\x00\xff\xff", b"a", b"\x00\x00"]),
                     max_size=200).map(b"".join),
       start=st.integers(0, 900), end=st.integers(0, 900))
def test_find_marker_agrees_with_bytes_find(data, start, end):
    found = gzip_chunks.find_marker(data, start, end)
    expected = data[:end].find(gzip_chunks.MARKER, start)
    assert found == (expected + 4 if expected >= 0 and start <= len(data) else -1)
    assert gzip_chunks.find_marker(memoryview(bytearray(data)), start, end) == found


# --- the chunk verifier ------------------------------------------------------------------------

@both_verifiers
@settings(max_examples=100, deadline=None)
@given(data=data_of_any_kind, chunk_size=st.integers(1, 4000), level=st.integers(1, 9))
def test_each_chunk_verifies_on_its_own(inflate_chunk, data, chunk_size, level):
    chunks = deflated_chunks(data, chunk_size, level)
    for i, chunk in enumerate(chunks):
        piece = data[i * chunk_size:(i + 1) * chunk_size]
        result = inflate_chunk(chunk + b"rest" if i == len(chunks) - 1 else chunk, chunk_size)
        assert result is not None and result.data == piece and result.crc == zlib.crc32(piece)
        assert result.used == len(chunk) and result.final == (i == len(chunks) - 1)


@both_verifiers
@settings(max_examples=60, deadline=None)
@given(data=data_of_any_kind, chunk_size=st.integers(1, 4000), cuts=st.lists(st.integers(0, 10_000), max_size=4))
def test_a_chunk_given_in_pieces_verifies_as_the_whole(inflate_chunk, data, chunk_size, cuts):
    """The reader hands a chunk lying across its blocks over as a list of views, unjoined."""
    for chunk in deflated_chunks(data, chunk_size, 6)[:3]:
        bounds = sorted({0, len(chunk), *(c % (len(chunk) + 1) for c in cuts)})
        pieces = [memoryview(chunk)[a:b] for a, b in zip(bounds, bounds[1:])] or [b""]
        assert outcome(inflate_chunk(pieces, chunk_size)) == outcome(inflate_chunk(chunk, chunk_size)) is not None
        damaged = bytearray(chunk)
        damaged[len(chunk) // 2] ^= 0x55
        pieces = [damaged[:len(chunk) // 3], memoryview(damaged)[len(chunk) // 3:]]
        assert outcome(inflate_chunk(pieces, chunk_size)) == outcome(inflate_chunk(bytes(damaged), chunk_size))


def outcome(result):
    return None if result is None else (result.data, result.crc, result.used, result.final, result.proved)


def streams_with_many_blocks(seed: int, size: int) -> bytes:
    """A raw deflate stream from zlib with every kind of block and flush, cut up at random."""
    rng = random.Random(seed)
    data = text_like(size, seed) if seed % 2 else bytes(rng.getrandbits(8) for _ in range(size))
    compressor = zlib.compressobj(rng.randint(0, 9), zlib.DEFLATED, -15, 9,
                                  rng.choice([zlib.Z_DEFAULT_STRATEGY, zlib.Z_FIXED, zlib.Z_HUFFMAN_ONLY,
                                              zlib.Z_RLE]))
    out, at = [], 0
    while at < len(data):
        step = rng.randint(1, 700)
        out.append(compressor.compress(data[at:at + step]))
        out.append(compressor.flush(rng.choice([zlib.Z_SYNC_FLUSH, zlib.Z_FULL_FLUSH, zlib.Z_BLOCK,
                                                zlib.Z_PARTIAL_FLUSH, zlib.Z_NO_FLUSH])))
        at += step
    return b"".join(out) + compressor.flush()


@pytest.mark.parametrize("seed", range(12))
def test_a_cut_verifies_exactly_where_a_block_starts_on_a_byte(seed):
    """Every cut of a stream with blocks of every kind: ISA-L's check accepts exactly the
    byte-aligned block boundaries; libdeflate's also accepts nothing else, except cuts inside
    the stream's final block (the exception the decoder settles with the next chunk)."""
    stream = streams_with_many_blocks(seed, 3000 + 500 * seed)
    output, starts, end_bit = walk(stream)
    boundaries = {bit // 8 for bit in starts[1:] if bit % 8 == 0}
    assert boundaries, "the stream should have byte-aligned blocks"
    for cut in range(1, len(stream) + 1):
        strict = inflate_chunk_isal(stream[:cut], 1 << 20, variable=True)
        quick = chunk_inflate._libdeflate_inflate(stream[:cut], PROBE, 1 << 20, False)
        if cut * 8 >= end_bit:  # the whole stream: the final chunk
            assert strict is not None and strict.final and strict.data == output
            assert quick is not None and quick[3] and quick[0] == output
        elif cut in boundaries:
            expected = walk(stream[:cut] + PROBE)[0]
            assert strict is not None and not strict.final and strict.data == expected
            assert quick is not None and not quick[3] and quick[0] == expected
        else:
            assert strict is None, f"cut at {cut} accepted, not a block boundary"
            assert quick is None or 8 * cut > starts[-1], f"cut at {cut} accepted outside the final block"


@both_verifiers
@settings(max_examples=100, deadline=None)
@given(data=data_of_any_kind, chunk_size=st.integers(1, 3000), level=st.integers(1, 9),
       cut=st.integers(0, 10**6), change=st.integers(1, 255))
def test_damage_never_verifies_with_the_wrong_output(inflate_chunk, data, chunk_size, level, cut, change):
    """A chunk with a byte changed either fails, or (a literal changed) gives output that the
    whole member's CRC then catches; it never claims a length other than its own."""
    chunk = deflated_chunks(data, chunk_size, level)[0]
    at = cut % len(chunk)
    damaged = chunk[:at] + bytes([chunk[at] ^ change]) + chunk[at + 1:]
    result = inflate_chunk(damaged, chunk_size)
    if result is not None:
        assert len(result.data) <= chunk_size
        assert result.final or len(result.data) == chunk_size
        try:
            reference = zlib.decompressobj(-15).decompress(damaged)
        except zlib.error:  # zlib is stricter than ISA-L about some code tables
            return
        assert result.data == reference[:len(result.data)]
