"""compress(1)'s .Z files decode exactly as `gzip -dc` decodes them: the same bytes, the same
verdict and wording, for every code width, both modes, and damage anywhere.  Real `compress`
(Debian's ncompress) makes the files: apt-get install ncompress."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import text_like
from helpers.gzip_words import reason
from octoray.formats import faults, lzw


@pytest.fixture(scope="session")
def compress_bin() -> str:
    assert shutil.which("compress"), "compress is needed for these tests: apt-get install ncompress"
    return "compress"


def compressed(compress_bin: str, data: bytes, *options: str) -> bytes:
    return subprocess.run([compress_bin, "-c", *options], input=data, capture_output=True).stdout


def ours(member: bytes, piece: int = 4096, to_stdout: bool = True):
    """(output, reason or None, warnings) of fgzip's decoder on a whole .Z file, in the words
    fgzip prints for its faults."""
    assert member[:2] == lzw.MAGIC
    out, warnings = [], []
    body = member[2:]
    try:
        lzw.decode((body[i:i + piece] for i in range(0, len(body), piece)), out.append,
                   on_warning=lambda notice: warnings.append(reason(notice)))
    except faults.Fault as fault:
        return b"".join(out), reason(fault, to_file=not to_stdout), warnings
    return b"".join(out), None, warnings


def gzips(gzip_bin: str, member: bytes):
    """(output, reason or None, warnings) of `gzip -dc` on the same bytes."""
    result = subprocess.run([gzip_bin, "-dc"], input=member, capture_output=True)
    lines = [line for line in result.stderr.decode().splitlines() if line]
    reasons = [line.split(": ", 2)[2] for line in lines if line.startswith("gzip: stdin: ")]
    warnings = [r for r in reasons if r.startswith("warning")]
    errors = [r for r in reasons if not r.startswith("warning")]
    assert result.returncode == (1 if errors else 2 if warnings else 0), result.stderr
    return result.stdout, (errors[0] if errors else None), warnings


samples = {
    "empty": b"",
    "one byte": b"x",
    "text": text_like(300_000, 2),
    "random": random.Random(3).randbytes(100_000),
    "runs": b"a" * 200_000 + b"ab" * 50_000,
}


@pytest.mark.parametrize("bits", [9, 10, 11, 12, 13, 14, 15, 16])
@pytest.mark.parametrize("name", sorted(samples))
def test_compress_output_decodes_as_gzip_decodes_it(compress_bin, gzip_bin, bits, name):
    member = compressed(compress_bin, samples[name], "-b", str(bits))
    mine = ours(member)
    assert mine == gzips(gzip_bin, member)
    if mine[1] is None:
        assert mine[0] == samples[name]


@pytest.mark.parametrize("name", sorted(samples))
def test_old_mode_without_clear_codes_decodes_as_gzip_decodes_it(compress_bin, gzip_bin, name):
    """compress -C (no CLEAR code).  ncompress 4.2.4 cannot read its own -C output once the
    codes widen, and neither can gzip: what matters is that fgzip reads it as gzip does."""
    member = compressed(compress_bin, samples[name], "-C")
    assert member[2] & lzw.FLAG_BLOCK_MODE == 0
    assert ours(member) == gzips(gzip_bin, member)


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 1 << 20])
def test_any_split_of_the_input_gives_the_same_output(compress_bin, piece):
    data = text_like(200_000, 4)
    assert ours(compressed(compress_bin, data), piece) == (data, None, [])


def test_reserved_flags_warn_and_decode_on(compress_bin, gzip_bin):
    member = bytearray(compressed(compress_bin, b"hello hello hello"))
    member[2] |= 0x20
    mine = ours(bytes(member))
    assert mine == gzips(gzip_bin, bytes(member))
    assert mine == (b"hello hello hello", None, ["warning, unknown flags 0x20"])


@pytest.mark.parametrize("flags,reason", [(0x91, "compressed with 17 bits, can only handle 16 bits"),
                                          (0x9f, "compressed with 31 bits, can only handle 16 bits")])
def test_too_many_bits_is_refused(gzip_bin, flags, reason):
    member = b"\x1f\x9d" + bytes([flags]) + b"abc"
    assert ours(member)[1] == reason == gzips(gzip_bin, member)[1]


def test_header_alone_is_empty_and_magic_alone_is_cut_short(gzip_bin):
    assert ours(b"\x1f\x9d\x90") == (b"", None, []) == gzips(gzip_bin, b"\x1f\x9d\x90")
    assert ours(b"\x1f\x9d")[1] == "unexpected end of file" == gzips(gzip_bin, b"\x1f\x9d")[1]


def test_writing_a_file_suggests_zcat(tmp_path, gzip_bin):
    member = b"\x1f\x9d\x90" + bytes([65, 0xFE, 0xFF, 0xFF])  # 'A', then a code far past the table
    (tmp_path / "a.Z").write_bytes(member)
    to_file = subprocess.run([gzip_bin, "-d", "a.Z"], cwd=tmp_path, capture_output=True).stderr.decode()
    assert to_file.strip() == "gzip: a.Z: " + ours(member, to_stdout=False)[1]
    assert ours(member, to_stdout=False)[1] == "corrupt input. Use zcat to recover some data."
    assert ours(member, to_stdout=True)[1] == "corrupt input." == gzips(gzip_bin, member)[1]


def test_output_arrives_in_bounded_pieces(compress_bin):
    pieces = []
    lzw.decode([compressed(compress_bin, bytes(30_000_000))[2:]], pieces.append)
    assert sum(map(len, pieces)) == 30_000_000 and max(map(len, pieces)) <= 1 << 20


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 5), bits=st.integers(9, 16), at=st.integers(0, 10**6),
       change=st.integers(0, 255), cut=st.booleans())
def test_damage_anywhere_gets_gzips_verdict(compress_bin, gzip_bin, seed, bits, at, change, cut):
    member = compressed(compress_bin, text_like(20_000, seed), "-b", str(bits))
    at = 2 + at % (len(member) - 2)
    damaged = member[:at] if cut else member[:at] + bytes([member[at] ^ change]) + member[at + 1:]
    assert ours(damaged) == gzips(gzip_bin, damaged)
