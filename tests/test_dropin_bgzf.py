"""BGZF input (bgzip, samtools, tabix: `.vcf.gz` and the like) decoded on every core, with
gzip's output, messages and statuses: sound, damaged, mixed with other members, followed by
other data."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from conftest import fgzip, run, text_like
from helpers.dropin import assert_same, gz_bytes, put
from octoray.formats import bgzf

BLOCK = bgzf.BLOCK


def starts(blob: bytes) -> list[int]:
    """Where each member starts, by the sizes the headers give."""
    found, pos = [], 0
    while pos < len(blob):
        found.append(pos)
        pos += bgzf.member_size(blob, pos)
    return found


DATA = text_like(3_000_000, seed=41)
GOOD = bgzf.compress(DATA)
AT = starts(GOOD)
K = 20  # the member the damage goes into


def member(k: int) -> tuple[int, int]:
    return AT[k], AT[k + 1]


def patched(blob: bytes, at: int, value: bytes) -> bytes:
    return blob[:at] + value + blob[at + len(value):]


def files(where):
    start, end = member(K)
    put(where, "ok.gz", GOOD)
    put(where, "bad.gz", patched(GOOD, start + 18 + 200, bytes([GOOD[start + 18 + 200] ^ 0x55])))
    put(where, "crc.gz", patched(GOOD, end - 8, bytes([GOOD[end - 8] ^ 1])))
    put(where, "len.gz", patched(GOOD, end - 4, bytes([GOOD[end - 4] ^ 1])))
    put(where, "cut.gz", GOOD[:start + 5000])
    put(where, "cuthead.gz", GOOD[:start + 10])  # inside a member's header
    # the BC size is only metadata: gzip reads the member by its deflate stream
    size = struct.unpack_from("<H", GOOD, start + 16)[0]
    put(where, "bclong.gz", patched(GOOD, start + 16, struct.pack("<H", size + 5)))
    put(where, "bcshort.gz", patched(GOOD, start + 16, struct.pack("<H", size - 5)))
    put(where, "garbage.gz", GOOD + b"junk")
    put(where, "zeros.gz", GOOD + bytes(100))
    put(where, "mixed.gz", GOOD[:AT[10]] + gz_bytes(b"a plain member\n", name=b"x") + GOOD[AT[10]:])
    put(where, "noeof.gz", GOOD[:AT[-1]])
    put(where, "twice.gz", GOOD + GOOD)


SOUND = ["ok", "bclong", "bcshort", "mixed", "noeof", "twice"]
DAMAGED = ["bad", "crc", "len", "cut", "cuthead", "garbage", "zeros"]


@pytest.mark.parametrize("name", SOUND + DAMAGED)
@pytest.mark.parametrize("mode", ["-dc", "-t", "-d", "-dN", "-tv"])
def test_bgzf_as_gzip(tmp_path, name, mode):
    # a damaged member's own last bytes can differ (ISA-L's look-ahead): its output is checked below
    exact = mode != "-dc" or name in SOUND + ["garbage", "zeros", "crc", "len"]
    assert_same(tmp_path, [mode, f"{name}.gz"], files, stdout="same" if exact else None)


@pytest.mark.parametrize("name", ["bad", "cut"])
def test_every_member_before_the_damage_is_written(tmp_path, name):
    files(tmp_path)
    result = fgzip("-dc", tmp_path / f"{name}.gz")
    assert result.returncode == 1
    assert result.stdout.startswith(DATA[:K * BLOCK])


def test_bgzf_output_is_the_input_on_every_core_count(tmp_path):
    blob = bgzf.compress(DATA, block=4000)  # 750 members: many tasks
    for threads in ("1", "2", "3"):
        assert fgzip("-dc", "-p", threads, input=blob, check=True).stdout == DATA


# fixed cases: ISA-L and gzip word some damage differently (README, known differences)
@settings(max_examples=25, deadline=None, derandomize=True)
@given(block=st.integers(1, 70_000), cut=st.integers(0, 10**6), flip=st.integers(0, 255), level=st.integers(1, 9))
def test_damaged_bgzf_like_gzip(block, cut, flip, level):
    """A random member size, one byte changed anywhere: the same status and messages as gzip,
    and (where gzip's output is whole) the same output."""
    data = DATA[: min(400_000, 2000 * block)]  # tiny members: 2,000 of them, not 400,000
    blob = bytearray(bgzf.compress(data, level, min(block, BLOCK)))
    at = cut % len(blob)
    blob[at] ^= flip or 1
    theirs = run(["gzip", "-dc"], input=bytes(blob))
    ours = fgzip("-dc", input=bytes(blob))
    assert ours.returncode == theirs.returncode
    assert ours.stderr.replace(b"fgzip", b"gzip") == theirs.stderr
    if theirs.returncode == 0:
        assert ours.stdout == theirs.stdout


def test_members_that_claim_more_than_64_kib_are_left_to_the_sequential_decoder(tmp_path):
    """Not bgzip's (it puts at most 64 KiB in a member): decoded, but a member at a time with
    bounded memory, as any gzip member; here 64 KiB of zeros a member, 80-odd bytes each."""
    zeros = bytes(1 << 20)
    blob = bgzf.compress(zeros, 9, 1 << 17)
    assert fgzip("-dc", input=blob, check=True).stdout == zeros
    assert fgzip("-dc", input=bgzf.compress(zeros, 9), check=True).stdout == zeros
