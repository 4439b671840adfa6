"""Property tests for the gzip member writer: any data in any chunking gunzips to the input."""

from __future__ import annotations

import gzip
import zlib

from hypothesis import given, settings, strategies as st

from octoray.formats import gzip as gz
from octoray.kernels.cpu import GZIP_LEVELS, deflate_chunk


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
        out.append(assembler.add(gz.DeflatedChunk(deflate_chunk(piece, previous, level, last),
                                                  gz.crc32(piece), len(piece), last)))
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


def test_crc_is_combined_across_chunks():
    data = bytes(range(256)) * 1000
    member = assemble(data, [1, 70_000, 200_000], 6, True)
    assert int.from_bytes(member[-8:-4], "little") == zlib.crc32(data)
    assert int.from_bytes(member[-4:], "little") == len(data)


def test_join_works_with_the_system_zlib_too(monkeypatch):
    """Without zlib-ng's exported inflate, the block walk falls back to the system zlib."""
    import deflate

    from octoray.formats import deflate_join

    monkeypatch.setattr(deflate_join._Inflater, "_zlib_ng", staticmethod(lambda: (None, "")))
    monkeypatch.setattr(deflate_join, "_zlib", None)
    data = bytes(range(256)) * 3000
    joined = deflate_join.unfinish(deflate.deflate_compress(data, 6)) + deflate.deflate_compress(data, 6)
    assert zlib.decompressobj(-15).decompress(joined) == data + data
    assert deflate_join._zlib.inflate.__name__ == "inflate"
