"""pack(1) files (.z) decode as `gzip -dc` decodes them.  No pack program is packaged any
more, so the files come from a small encoder here, checked against gzip itself."""

from __future__ import annotations

import heapq
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import text_like
from helpers.gzip_words import reason
from octoray.formats import faults, pack


def packed(data: bytes) -> bytes:
    """pack's format: Huffman code lengths over the bytes plus an end-of-file code, which gets
    the longest code's last value; inner nodes take the lowest values at each length."""
    counts = {b: data.count(bytes([b])) for b in set(data)}
    heap = [(count, i, [symbol]) for i, (symbol, count) in enumerate(sorted(counts.items()))]
    heap.append((0, -1, ["eof"]))
    heapq.heapify(heap)
    depth = {symbol: 0 for _, _, group in heap for symbol in group}
    serial = len(heap)
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        for symbol in a[2] + b[2]:
            depth[symbol] += 1
        heapq.heappush(heap, (a[0] + b[0], serial, a[2] + b[2]))
        serial += 1
    max_len = max(depth.values())
    assert depth["eof"] == max_len and max_len <= pack.MAX_BITS
    by_length = {n: sorted(s for s in depth if s != "eof" and depth[s] == n) for n in range(1, max_len + 1)}
    leaves = {n: len(by_length[n]) + (n == max_len) for n in by_length}
    codes, parents = {}, 0
    for n in range(max_len, 0, -1):  # the deepest level has no inner nodes
        parents = (parents + leaves.get(n + 1, 0)) // 2 if n < max_len else 0
        for i, symbol in enumerate(by_length[n] + (["eof"] if n == max_len else [])):
            codes[symbol] = (parents + i, n)
    header = len(data).to_bytes(4, "big") + bytes([max_len])
    header += bytes(leaves[n] - 2 * (n == max_len) for n in range(1, max_len + 1))
    header += bytes(s for n in range(1, max_len + 1) for s in by_length[n])
    bits = "".join(format(codes[s][0], f"0{codes[s][1]}b") for s in [*data, "eof"])
    bits += "0" * (-len(bits) % 8)
    return pack.MAGIC + header + int(bits or "0", 2).to_bytes(len(bits) // 8, "big")


def ours(member: bytes, piece: int = 7):
    """(output, reason or None, input after the stream), a fault in the words fgzip prints."""
    out, body = [], member[2:]
    try:
        decoded = pack.decode((body[i:i + piece] for i in range(0, len(body), piece)), out.append)
    except faults.Fault as fault:
        return b"".join(out), reason(fault), None
    return b"".join(out), None, decoded.unused


def gzips(gzip_bin: str, member: bytes):
    result = subprocess.run([gzip_bin, "-dc"], input=member, capture_output=True)
    lines = [line for line in result.stderr.decode().splitlines() if line.startswith("gzip: stdin: ")]
    return result.stdout, (lines[0].split(": ", 2)[2] if lines else None), result.returncode


def test_gzips_own_sample():
    sample = b"\x1f\x1e\x00\x00\x00\x06\x03\x01\x01\x00\x61\x6e\x62\x16\xc8"
    assert ours(sample) == (b"banana", None, b"")
    assert packed(b"banana") == sample


@pytest.mark.parametrize("data", [b"ab", b"banana", text_like(100_000, 1), bytes(range(200)) * 50,
                                  b"a" * 1000 + b"b"])
def test_packed_files_decode_as_gzip_decodes_them(gzip_bin, data):
    member = packed(data)
    assert gzips(gzip_bin, member) == (data, None, 0)
    assert ours(member) == (data, None, b"")


def test_a_member_may_follow(gzip_bin):
    import gzip as pygzip

    member = packed(b"first ") + pygzip.compress(b"second")
    assert gzips(gzip_bin, member)[0] == b"first second"
    out, reason, unused = ours(member)
    assert (out, reason) == (b"first ", None) and unused.startswith(b"\x1f\x8b")


@pytest.mark.parametrize("blob", [  # gzip's tests/unpack-invalid
    b"\037\036\000\000\037\213\010\000\000\000\000\000\002\003\036\000\000\000\002\003\037\213\010\000\000"
    b"\000\000\000\002\003\355\301\001\015\000\000\000\302\240\037\000\302\240\037\213\010\000\000\000\000"
    b"\000\002\003\355\301",
    b"\037\036\016\030\000\000\000",
    b"\037\036\000\000\000\006\000", b"\037\036\000\000\000\006\032", b"\037\036\000\000\000\006\003\002",
])
def test_invalid_trees_are_refused_as_gzip_refuses_them(gzip_bin, blob):
    mine, theirs = ours(blob), gzips(gzip_bin, blob)
    assert mine[1] is not None and theirs[2] == 1
    assert mine[1] == theirs[1]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=2, max_size=3000) | st.builds(text_like, st.integers(2, 20000)),
       at=st.integers(0, 10**6), change=st.integers(0, 255), cut=st.booleans())
def test_damage_anywhere_gets_gzips_verdict(gzip_bin, data, at, change, cut):
    member = packed(data)
    at = 2 + at % (len(member) - 2)
    damaged = member[:at] if cut else member[:at] + bytes([member[at] ^ change]) + member[at + 1:]
    mine, theirs = ours(damaged), gzips(gzip_bin, damaged)
    if mine[1] is None and mine[2]:  # bytes left: gzip reads them as the next member
        assert theirs[0].startswith(mine[0])
        return
    assert mine[1] == theirs[1]
    if mine[1] is None:
        assert mine[0] == theirs[0]
