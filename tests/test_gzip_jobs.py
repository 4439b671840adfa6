"""In-process tests of the gzip jobs: compress_stream and decompress_stream on real
descriptors with the embedded executor, faults as types with the totals before them."""

from __future__ import annotations

import gzip as pygzip
import os
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from octoray.engine.executors import LocalExecutor
from octoray.formats import faults, gzip_chunks
from octoray.jobs.gunzip import decompress_stream
from octoray.jobs.gzip import Wrapper, compress_stream, rsyncable_chunks


def fd_of(tmp_path, data: bytes, name: str = "in") -> int:
    path = tmp_path / name
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def compress(tmp_path, data: bytes, **kw) -> tuple[bytes, object]:
    out = bytearray()
    fd = fd_of(tmp_path, data)
    try:
        with LocalExecutor(2) as executor:
            totals = compress_stream(fd, out.extend, executor, block_size=32 * 1024, **kw)
    finally:
        os.close(fd)
    return bytes(out), totals


def decompress(tmp_path, data: bytes, **kw):
    out = bytearray()
    fd = fd_of(tmp_path, data, "gz")
    try:
        totals, outcome = decompress_stream(fd, out.extend, **kw)
    finally:
        os.close(fd)
    return bytes(out), totals, outcome


DATA = b"".join(b"line %d of some text that repeats itself\n" % (i % 977) for i in range(20000))


@pytest.mark.parametrize("kw", [
    {"level": 1}, {"level": 6}, {"level": 9}, {"level": 11}, {"level": 0},
    {"level": 6, "strategy": "huffman"}, {"level": 6, "strategy": "rle"},
    {"level": 2}, {"level": 3}, {"level": 6, "rsyncable": True},
])
def test_every_variant_is_one_member_that_zlib_and_the_job_read(tmp_path, kw):
    out, totals = compress(tmp_path, DATA, **kw)
    assert pygzip.decompress(out) == DATA
    assert (totals.bytes_in, totals.bytes_out) == (len(DATA), len(out))
    back, back_totals, outcome = decompress(tmp_path, out)
    assert back == DATA and outcome is None and back_totals.members == 1


def test_a_zlib_wrapper_carries_the_adler32(tmp_path):
    out, _ = compress(tmp_path, DATA, wrapper=Wrapper("zlib", level=6))
    assert zlib.decompress(out) == DATA


def test_totals_before_a_fault_travel_with_it(tmp_path):
    good, _ = compress(tmp_path, DATA)
    with pytest.raises(faults.UnexpectedEnd) as caught:
        decompress(tmp_path, good + good[: len(good) // 2])
    assert caught.value.totals.members == 1 and caught.value.totals.bytes_out == len(DATA)


@pytest.mark.parametrize("damage, fault", [
    (lambda g: g[:-8] + bytes([g[-8] ^ 1]) + g[-7:], faults.CrcMismatch),
    (lambda g: g[:-4] + bytes([g[-4] ^ 1]) + g[-3:], faults.LengthMismatch),
    (lambda g: b"not gzip at all", faults.NotCompressed),
    (lambda g: g[:2] + b"\x07" + g[3:], faults.UnknownMethod),
    (lambda g: g[:3] + bytes([g[3] | 0x20]) + g[4:], faults.Encrypted),
])
@pytest.mark.parametrize("parallel", [False, True])
def test_damage_raises_its_fault_type(tmp_path, damage, fault, parallel):
    good, _ = compress(tmp_path, DATA)
    with LocalExecutor(2) as executor, pytest.raises(fault):
        decompress(tmp_path, damage(good), executor=(lambda: executor) if parallel else None)


def test_a_member_of_independent_chunks_is_decoded_by_the_workers(tmp_path):
    out, totals = compress(tmp_path, DATA, index=True)
    offset, index = totals.chunk_index  # a file's size is known: room for an index was made
    out = out[:offset] + index + out[offset + len(index):]
    assert len(gzip_chunks.parse_layout(out).sizes) == -(-len(DATA) // (32 * 1024))
    assert compress(tmp_path, DATA)[1].chunk_index is None  # no index: the output is a pipe
    with LocalExecutor(2) as executor:
        back, back_totals, outcome = decompress(tmp_path, out + out, executor=lambda: executor)
        assert executor.tasks_done >= 2 * (len(DATA) // (32 * 1024))
    assert back == DATA + DATA and outcome is None and back_totals.members == 2
    assert (back_totals.last_crc, back_totals.last_size) == (zlib.crc32(DATA), len(DATA))
    zlib_wrapped, _ = compress(tmp_path, DATA, wrapper=Wrapper("zlib", level=6))
    assert zlib_wrapped[:2] != b"\x1f\x8b"  # the chunk subfield is gzip's: other wrappers have none


def test_what_follows_the_last_member_is_an_outcome_not_an_exception(tmp_path):
    good, _ = compress(tmp_path, b"abc")
    assert isinstance(decompress(tmp_path, good + b"\0" * 10)[2], faults.TrailingZeros)
    assert isinstance(decompress(tmp_path, good + b"\0junk")[2], faults.TrailingGarbage)
    later = good[:3] + bytes([good[3] | 0x20]) + good[4:]
    out, _, outcome = decompress(tmp_path, good + later)
    assert out == b"abc" and isinstance(outcome, faults.Encrypted)


def test_passthrough_copies_what_is_not_gzip(tmp_path):
    out, totals, outcome = decompress(tmp_path, b"plain text\n", passthrough=True)
    assert out == b"plain text\n" and totals.copied and outcome is None


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=40000), st.sampled_from([4096, 8192]))
def test_rsyncable_chunks_cover_the_input_in_order(tmp_path_factory, data, block):
    path = tmp_path_factory.mktemp("r") / "in"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = list(rsyncable_chunks(fd, block))
    finally:
        os.close(fd)
    assert b"".join(bytes(c) for c, _ in chunks) == data
    assert [last for _, last in chunks] == [False] * (len(chunks) - 1) + ([True] if chunks else [])
    assert all(len(c) <= 4 * block for c, _ in chunks)
