"""Decoding chunked members in parallel (octoray.jobs.gunzip_parallel): byte-exact output for
any data, chunk size, index or none and input split anyhow; and for damage anywhere, the
same verdict and output as a sequential decoder, which is what gzip's messages come from."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from chunked_members import chunked_member, primed_chunk
from conftest import text_like
from octoray.engine.executors import LocalExecutor
from octoray.formats import gzip as gz
from octoray.formats import gzip_chunks
from octoray.jobs.gunzip_parallel import MAX_CHUNK_SIZE, can_decode, inflate_member
from octoray.formats import faults

# what the sequential decoder raises, by kind
FORMAT_VIOLATED, UNEXPECTED_EOF = faults.CorruptData, faults.UnexpectedEnd
CRC_ERROR, LENGTH_ERROR = faults.CrcMismatch, faults.LengthMismatch

data_of_any_kind = st.one_of(
    st.binary(max_size=5000),
    st.builds(lambda unit, n: unit * n, st.binary(min_size=1, max_size=30), st.integers(0, 2000)),
    st.builds(lambda n, seed: text_like(n, seed), st.integers(0, 12000), st.integers(0, 5)),
)


@pytest.fixture(scope="module")
def executor():
    with LocalExecutor(2) as pool:
        yield pool


def split(data: bytes, rng: random.Random, small: bool = False) -> list[bytes]:
    """The input as a pipe might deliver it; `small`: never more than 4 KiB at once."""
    pieces, at = [], 0
    while at < len(data):
        step = rng.choice([1, 7, 100, 1000, 4096] if small else [1, 7, 100, 4096, 1 << 20])
        pieces.append(data[at:at + step])
        at += step
    return pieces


@contextlib.contextmanager
def reader_blocks(seed: int):
    """Odd seeds: the reader keeps its input in 2 KiB blocks (the input comes in pieces of at
    most 4 KiB then), so that chunks lie across blocks and go to the workers as lists of views,
    unjoined; even seeds: the real size."""
    from octoray.jobs import gunzip_parallel

    saved = gunzip_parallel.BLOCK
    gunzip_parallel.BLOCK = 2048 if seed % 2 else saved
    try:
        yield
    finally:
        gunzip_parallel.BLOCK = saved


def decode(member: bytes, executor, seed: int = 0):
    """(output, Inflated) of the parallel decoder, the member's header parsed here."""
    header = gz.parse_header(member)
    layout = gzip_chunks.parse_layout(member)
    out: list[bytes] = []
    with reader_blocks(seed):
        result = inflate_member(layout, split(member[header.length:], random.Random(seed), seed % 2 == 1),
                                out.append, executor)
    return b"".join(out), result


def sequential(member: bytes):
    """The reference: one inflater from the first byte, as fgzip's sequential decoder and gzip
    decode a member.  (output, reason or None, bytes after the member)."""
    from isal import igzip_lib

    body = member[gz.parse_header(member).length:]
    inflater = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_DEFLATE, zdict=gz.GZIP_START_WINDOW)
    try:
        out = inflater.decompress(body)
    except igzip_lib.IsalError:
        return None, FORMAT_VIOLATED, None
    if not inflater.eof:
        return out, UNEXPECTED_EOF, None
    rest = inflater.unused_data
    if len(rest) < 8:
        return out, UNEXPECTED_EOF, None
    try:
        gz.check_trailer(rest[:8], gz.crc32(out), len(out))
    except (CRC_ERROR, LENGTH_ERROR) as fault:
        return out, type(fault), None
    return out, None, rest[8:]


def agrees_with_sequential(member: bytes, executor, seed: int = 0, original: bytes | None = None) -> None:
    """The parallel decoder fails where and as the sequential one does.  One exception: a
    damaged fixed-Huffman block whose length code 285 became one of the codes deflate reserves
    (286, 287) still decodes, to the `original` data, because libdeflate reads those codes as
    length 258 (README: Known differences)."""
    expected, reason, rest = sequential(member)
    out: list[bytes] = []
    header = gz.parse_header(member)
    pieces = split(member[header.length:], random.Random(seed), seed % 2 == 1)
    try:
        with reader_blocks(seed):
            result = inflate_member(gzip_chunks.parse_layout(member), pieces, out.append, executor)
    except faults.Fault as failure:
        assert type(failure) is reason
        got = b"".join(out)
        if expected is not None:  # output before the fault: what a sequential decode wrote
            assert expected.startswith(got) or got.startswith(expected)
        return
    if reason is not None and original is not None and b"".join(out) == original:
        return
    assert reason is None
    assert b"".join(out) == expected and result.unused == rest


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=data_of_any_kind, chunk_size=st.integers(1, 5000), level=st.integers(1, 9),
       index=st.booleans(), trailing=st.binary(max_size=20), seed=st.integers(0, 99))
def test_any_data_decodes_in_parallel_byte_exact(executor, data, chunk_size, level, index, trailing, seed):
    member = chunked_member(data, chunk_size, level=level, index=index)
    out, result = decode(member + trailing, executor, seed)
    assert out == data and result.unused == trailing
    assert (result.crc, result.size) == (gz.crc32(data), len(data))
    assert not result.sequential and result.chunks == max(1, -(-len(data) // chunk_size))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=data_of_any_kind, cuts=st.lists(st.integers(1, 30000), max_size=12), index=st.booleans())
def test_variable_chunks_decode_in_parallel(executor, data, cuts, index):
    cuts = sorted({c for c in cuts if c < len(data)})
    chunk_size = max([b - a for a, b in zip([0, *cuts], [*cuts, len(data)])] or [1]) or 1
    member = chunked_member(data, chunk_size, index=index, cuts=cuts)
    out, result = decode(member, executor)
    assert out == data and not result.sequential


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=data_of_any_kind, chunk_size=st.integers(1, 3000), index=st.booleans(),
       at=st.integers(0, 10**6), seed=st.integers(0, 99))
def test_truncation_anywhere_fails_as_sequential_decoding_does(executor, data, chunk_size, index, at, seed):
    member = chunked_member(data, chunk_size, index=index)
    start = gz.parse_header(member).length
    agrees_with_sequential(member[:start + at % (len(member) - start)], executor, seed)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=data_of_any_kind, chunk_size=st.integers(1, 3000), index=st.booleans(),
       at=st.integers(0, 10**6), change=st.integers(1, 255), seed=st.integers(0, 99))
def test_damage_anywhere_gives_the_sequential_verdict(executor, data, chunk_size, index, at, change, seed):
    member = chunked_member(data, chunk_size, index=index)
    start = gz.parse_header(member).length
    at = start + at % (len(member) - start)
    agrees_with_sequential(member[:at] + bytes([member[at] ^ change]) + member[at + 1:], executor, seed, data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=data_of_any_kind, chunk_size=st.integers(1, 3000), claimed=st.integers(1, 5000),
       sizes=st.lists(st.integers(1, 5000) | st.integers(1, 2**32 - 1), max_size=10), variable=st.booleans())
def test_a_header_that_lies_still_decodes_exactly(executor, data, chunk_size, claimed, sizes, variable):
    """Wrong chunk size, wrong index, or the flag on a stream whose chunks are not what it says:
    verification fails and decoding goes on sequentially, byte-exact."""
    honest = chunked_member(data, chunk_size, index=False)
    body = honest[gz.parse_header(honest).length:]
    head, at = gzip_chunks.header(chunk_size=claimed, slots=len(sizes), variable=variable)
    head = head[:at] + gzip_chunks.index_bytes(sizes, len(sizes)) + head[at + 4 * len(sizes):]
    out, result = decode(head + body, executor)
    assert out == data and result.unused == b""


def test_dependent_chunks_under_the_flag_decode_exactly(executor):
    """Chunks primed with the previous chunk's window (another tool's member under the flag)
    do not verify alone: the decoder falls back to one sequential pass."""

    data, size = text_like(400_000, 3), 50_000
    chunks, previous = [], None
    for i in range(0, len(data), size):
        piece = data[i:i + size]
        chunks.append(primed_chunk(piece, previous, 1, i + size >= len(data)))
        previous = piece[-gz.DICTIONARY_SIZE:]
    head, _ = gzip_chunks.header(chunk_size=size)
    out, result = decode(head + b"".join(chunks) + gz.trailer(gz.crc32(data), len(data)), executor)
    assert out == data and result.sequential


def test_markers_inside_stored_data_are_passed_over(executor):
    """Incompressible data full of 00 00 ff ff is stored verbatim: the markers in it are no
    chunk ends, and the decoder finds the true ones."""
    rng = random.Random(5)
    data = b"".join(rng.randbytes(rng.randint(0, 300)) + b"\x00\x00\xff\xff" for _ in range(3000))
    for index in (True, False):
        member = chunked_member(data, 100_000, level=6, index=index)
        out, result = decode(member, executor)
        assert out == data


def test_a_rare_marker_by_chance_costs_one_retry(executor):
    """One chance marker inside a chunk: that chunk is retried with the next end, and the
    rest still goes in parallel."""
    rng = random.Random(7)
    data = rng.randbytes(600_000)
    data = data[:150_000] + b"\x00\x00\xff\xff" + data[150_004:]  # stored: the marker shows
    member = chunked_member(data, 100_000, level=6, index=False)
    assert member[gz.parse_header(member).length:].count(gzip_chunks.MARKER) == 6
    out, result = decode(member, executor)
    assert out == data and not result.sequential and result.chunks == 6


def test_read_ahead_stays_bounded_whatever_the_index_says(executor):
    """An index entry claiming gigabytes is not believed: the decoder never reads further ahead
    than its window of chunks, each at most as long as a chunk can be."""
    from octoray.jobs.gunzip_parallel import BLOCK

    from itertools import accumulate

    from chunked_members import deflated_chunks

    data = text_like(6 << 20, 8)
    honest = chunked_member(data, 1 << 16, index=False)
    body = honest[gz.parse_header(honest).length:]
    used = [0, *accumulate(len(c) for c in deflated_chunks(data, 1 << 16))]  # input behind k chunks
    head, at = gzip_chunks.header(chunk_size=1 << 16, slots=2)
    head = head[:at] + gzip_chunks.index_bytes([2**32 - 1, 2**31], 2) + head[at + 8:]
    read, ahead, out = [0], [], []

    def pieces():
        for i in range(0, len(body), 4096):
            read[0] += len(body[i:i + 4096])
            yield body[i:i + 4096]

    def write(piece):
        out.append(piece)
        ahead.append(read[0] - used[len(out)])

    inflate_member(gzip_chunks.parse_layout(head), pieces(), write, executor)
    assert b"".join(out) == data
    assert max(ahead) < 8 * gzip_chunks.max_compressed(1 << 16) + 2 * BLOCK


def test_a_chunk_believed_but_not_proved_is_settled(executor, monkeypatch):
    """libdeflate's one blind spot, simulated: a chance marker inside the last chunk, and the
    cut there 'verified' with wrong output.  The decoder holds such a chunk back until the next
    one verifies; here the next one cannot, ISA-L refuses the held one, and the output is right.
    (The reader asks for the last chunks strict, which closes the blind spot; the simulation
    ignores that, as for a reader that did not see the end coming.)"""
    from octoray.formats import chunk_inflate
    from octoray.jobs import gunzip_parallel

    rng = random.Random(11)
    size = 100_000
    data = rng.randbytes(3 * size)
    data = data[:2 * size + 50_000] + b"\x00\x00\xff\xff" + data[2 * size + 50_004:]  # stored: it shows
    member = chunked_member(data, size, level=6, index=False)
    body = member[gz.parse_header(member).length:]
    fake_end = body.index(b"\x00\x00\xff\xff" + data[2 * size + 50_004:2 * size + 50_020]) + 4
    believed = []

    def blind(region, chunk_size, variable=False, strict=False):
        result = chunk_inflate.inflate_chunk(region, chunk_size, variable)
        if result is None and len(body) - fake_end > 0 and bytes(region[-4:]) == b"\x00\x00\xff\xff" \
                and body.find(bytes(region)) + len(region) == fake_end:
            believed.append(True)  # the blind spot: a wrong chunk passes, not proved
            return chunk_inflate.InflatedChunk(b"?" * chunk_size, gz.crc32(b"?" * chunk_size), len(region),
                                               False, False)
        return result

    monkeypatch.setattr(gunzip_parallel, "inflate_chunk", blind)
    out, result = decode(member, executor)
    assert believed and out == data


def test_the_last_chunks_are_decoded_strictly_on_the_workers(executor, monkeypatch):
    """The reader sees the input's end coming and asks for the last chunks strict (ISA-L,
    proved), so the member ends without a proof decoded on the reader's thread."""
    from octoray.jobs import gunzip_parallel

    asked, proofs = [], []
    real_inflate, real_isal = gunzip_parallel.inflate_chunk, gunzip_parallel.inflate_chunk_isal

    def recording(region, chunk_size, variable=False, strict=False):
        result = real_inflate(region, chunk_size, variable, strict)
        if result is not None:  # not the trailer, which the indexed reader also tries as a chunk
            asked.append((body.find(bytes(region)), strict))  # in chunk order once sorted
        return result

    def proof(*args):
        proofs.append(True)
        return real_isal(*args)

    monkeypatch.setattr(gunzip_parallel, "inflate_chunk", recording)
    monkeypatch.setattr(gunzip_parallel, "inflate_chunk_isal", proof)
    data = text_like(590_000, 4)  # 12 chunks, the last one short
    for index in (True, False):
        asked.clear()
        member = chunked_member(data, 50_000, index=index)
        body = member[gz.parse_header(member).length:]
        out, result = decode(member, executor)
        assert out == data and not result.sequential
        flags = [strict for _, strict in sorted(asked)]
        first = flags.index(True)  # from there on: the chunks within a chunk's reach of the end
        assert len(flags) == 12 and 0 < first <= 10 and all(flags[first:])
    assert not proofs


def test_empty_input_and_limits(executor):
    out, result = decode(chunked_member(b"", 1 << 20), executor)
    assert out == b"" and result.size == 0 and result.chunks == 1
    big = gzip_chunks.ChunkLayout(MAX_CHUNK_SIZE + 1)
    assert not can_decode(big, executor) and not can_decode(None, executor)
    assert can_decode(gzip_chunks.ChunkLayout(1 << 20), executor)
    assert not can_decode(gzip_chunks.ChunkLayout(1 << 20), LocalExecutor(1))


def test_on_a_cluster_a_worker_killed_mid_run_changes_nothing(tmp_path):
    """A 2-worker loopback Dask cluster: chunks are decoded on the workers, one of which is
    SIGKILLed half way; its chunks go to the other, and the output is byte-exact."""
    import signal
    import time

    from octoray.engine.dask_executor import connect
    from test_cluster import Cluster

    data = text_like(24 << 20, seed=12)
    member = chunked_member(data, 1 << 16, index=False)
    body = member[gz.parse_header(member).length:]
    cluster = Cluster(tmp_path)
    try:
        cluster.add_worker("w0", 0)
        cluster.add_worker("w1", 1)
        cluster.wait_for_workers(2)
        out: list[bytes] = []
        killed = []

        def write(piece):
            out.append(piece)
            if not killed and sum(map(len, out)) >= len(data) // 2:
                killed.append(True)
                cluster.workers["w1"].send_signal(signal.SIGKILL)

        def slow(pieces):
            for piece in pieces:
                time.sleep(0.005)
                yield piece

        with connect(cluster.address) as executor:
            assert can_decode(gzip_chunks.parse_layout(member), executor)
            result = inflate_member(gzip_chunks.parse_layout(member),
                                    slow(split(body, random.Random(1))), write, executor)
        assert killed and b"".join(out) == data and not result.sequential
    finally:
        cluster.stop()


def test_inflate_fd_reads_a_chunked_member_from_a_descriptor(executor, tmp_path):
    from octoray.jobs.gunzip_parallel import inflate_fd

    data = text_like(500_000, 2)
    path = tmp_path / "a.gz"
    path.write_bytes(chunked_member(data, 1 << 16, name=b"a") + b"after")
    out: list[bytes] = []
    with open(path, "rb") as f:
        result = inflate_fd(f.fileno(), out.append, executor)
    assert b"".join(out) == data and result.unused == b"after"
    (tmp_path / "b.gz").write_bytes(gz.header() + b"\x03\x00" + gz.trailer(0, 0))
    with open(tmp_path / "b.gz", "rb") as f, pytest.raises(ValueError):
        inflate_fd(f.fileno(), out.append, executor)


def test_reserved_codes_in_the_last_chunk_get_gzips_verdict(executor):
    """A damaged last chunk (fixed Huffman) that uses a length code RFC 1951 reserves: libdeflate
    reads it as length 258 and ends the stream early, gzip says `format violated`, as must we."""
    head, _ = gzip_chunks.header(chunk_size=601)
    member = head + bytes.fromhex("9b3071c2281ca32890b0305665c89200cb2898cf57020000")
    assert sequential(member)[1] is FORMAT_VIOLATED
    agrees_with_sequential(member, executor)
