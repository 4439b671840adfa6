"""zlib streams decode as `pigz -d` decodes them, and a zip file's first entry as `gzip -d`
(or, where gzip misreads zip64 sizes, `pigz -d`) does: same bytes, same verdict."""

from __future__ import annotations

import random
import shutil
import subprocess
import zlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import text_like
from helpers.gzip_words import reason
from octoray.formats import faults, zip_entry, zlib_stream
from octoray.formats import gzip as gz

UNEXPECTED_EOF, FORMAT_VIOLATED = reason(faults.UnexpectedEnd()), reason(faults.CorruptData())
PIGZ_REASONS = {  # pigz's words -> the gzip words fgzip uses
    "incomplete deflate data": UNEXPECTED_EOF,
    "missing trailer": UNEXPECTED_EOF,
    "invalid deflate data": FORMAT_VIOLATED,
    "adler32 mismatch": reason(faults.CrcMismatch()),
}


def same_verdict(mine, theirs) -> None:
    """Both fine with the same output and flags, or both refused: for the same reason, unless
    one inflater found the deflate data invalid where the other (zlib's and gzip's inflate
    are laxer about some code tables than ISA-L) decoded it and then failed a check."""
    if mine[1] is None or theirs[1] is None:
        assert mine == theirs
    elif FORMAT_VIOLATED not in (mine[1], theirs[1]):
        assert mine[1:] == theirs[1:]


def pieces_of(data: bytes, seed: int = 0):
    rng, at = random.Random(seed), 0
    while at < len(data):
        step = rng.choice([1, 5, 333, 1 << 16])
        yield data[at:at + step]
        at += step


# --- zlib ------------------------------------------------------------------------------------

def ours_zlib(stream: bytes, seed: int = 0):
    """(output, reason or None, trailing junk?) as fgzip reads a .zz, in fgzip's words."""
    if not zlib_stream.is_header(stream[:2]):
        return b"", "unrecognized", False
    out, pieces = [], pieces_of(stream, seed)
    try:
        decoded = zlib_stream.decode(pieces, out.append)
    except faults.Fault as fault:
        return b"".join(out), reason(fault), False
    return b"".join(out), None, bool(decoded.unused or next(pieces, b""))


def pigzs(pigz_bin: str, stream: bytes):
    result = subprocess.run([pigz_bin, "-dc"], input=stream, capture_output=True)
    text = result.stderr.decode()
    if "unrecognized format" in text or "empty" in text:
        return b"", "unrecognized", False
    reason = next((ours for theirs, ours in PIGZ_REASONS.items() if theirs in text), None)
    assert reason or result.returncode == 0 or "trailing junk" in text, text
    return result.stdout, reason, "trailing junk" in text


@pytest.mark.parametrize("wbits", [9, 12, 15])
@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_zlib_streams_of_any_window_and_level(pigz_bin, wbits, level):
    data = text_like(200_000, level)
    compressor = zlib.compressobj(level, zlib.DEFLATED, wbits)
    stream = compressor.compress(data) + compressor.flush()
    assert ours_zlib(stream) == pigzs(pigz_bin, stream) == (data, None, False)


def test_pigz_z_output(pigz_bin):
    data = text_like(3_000_000, 9)
    stream = subprocess.run([pigz_bin, "-z", "-c"], input=data, capture_output=True, check=True).stdout
    assert ours_zlib(stream, 3) == (data, None, False)


@pytest.mark.parametrize("tail", [b"junk", zlib.compress(b"again"), b"\0"])
def test_anything_after_the_stream_is_trailing_junk(pigz_bin, tail):
    stream = zlib.compress(b"hello" * 100) + tail
    assert ours_zlib(stream) == pigzs(pigz_bin, stream) == (b"hello" * 100, None, True)


@pytest.mark.parametrize("first", [b"\x78\xbb", b"\x78\x9d", b"\x88\x98", b"\x1f\x8b", b"\x08\x1d"])
def test_the_header_check_is_pigzs(pigz_bin, first):
    stream = first + zlib.compress(b"x")[2:]
    assert ours_zlib(stream)[1:] == pigzs(pigz_bin, stream)[1:]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 5), level=st.integers(0, 9), at=st.integers(0, 10**6), change=st.integers(0, 255),
       cut=st.booleans())
def test_damaged_zlib_gets_pigzs_verdict(pigz_bin, seed, level, at, change, cut):
    stream = zlib.compress(text_like(30_000, seed), level)
    at %= len(stream)
    damaged = stream[:at] if cut else stream[:at] + bytes([stream[at] ^ change]) + stream[at + 1:]
    same_verdict(ours_zlib(damaged, seed), pigzs(pigz_bin, damaged))


# --- zip -------------------------------------------------------------------------------------

def ours_zip(archive: bytes, seed: int = 0):
    """(output, reason or None, more entries?) as fgzip reads a .zip, in fgzip's words."""
    out = []
    try:
        decoded = zip_entry.decode(pieces_of(archive, seed), out.append)
    except faults.Fault as fault:
        return b"".join(out), reason(fault), False
    return b"".join(out), None, decoded.more_entries


def gzips(gzip_bin: str, archive: bytes):
    result = subprocess.run([gzip_bin, "-dc"], input=archive, capture_output=True)
    lines = [line for line in result.stderr.decode().splitlines() if line]
    more = any("has more than one entry" in line for line in lines)
    reasons = [line.split(": ", 2)[2] for line in lines if line.startswith("gzip: stdin: ")]
    if any(line.startswith("gzip: stdin ") for line in lines):  # "gzip: stdin is encrypted ..." style
        reasons += [line.split(" ", 2)[2] for line in lines if line.startswith("gzip: stdin ")]
    return result.stdout, (reasons[0] if reasons else None), more


@pytest.fixture(scope="session")
def zip_bin() -> str:
    assert shutil.which("zip"), "Info-ZIP zip is needed for these tests: apt-get install zip"
    return "zip"


def zipped(zip_bin: str, tmp_path, data: bytes, *options: str, stdin: bool = False) -> bytes:
    source = tmp_path / "entry"
    source.write_bytes(data)
    target = tmp_path / "out.zip"
    target.unlink(missing_ok=True)
    if stdin:
        subprocess.run([zip_bin, "-q", *options, str(target), "-"], input=data, check=True)
    else:
        subprocess.run([zip_bin, "-q", *options, str(target), "entry"], cwd=tmp_path, check=True)
    return target.read_bytes()


@pytest.mark.parametrize("options", [(), ("-0",), ("-9",), ("-1",)])
def test_info_zip_entries_decode_as_gzip_decodes_them(zip_bin, gzip_bin, tmp_path, options):
    data = text_like(150_000, 1)
    archive = zipped(zip_bin, tmp_path, data, *options)
    assert ours_zip(archive) == gzips(gzip_bin, archive) == (data, None, False)


def test_zip64_sizes_from_a_pipe_are_read_as_pigz_reads_them(zip_bin, gzip_bin, pigz_bin, tmp_path):
    data = text_like(150_000, 2)
    archive = zipped(zip_bin, tmp_path, data, stdin=True)
    assert gzips(gzip_bin, archive)[1] == reason(faults.LengthMismatch())  # gzip misreads the zip64 field
    assert subprocess.run([pigz_bin, "-dc"], input=archive, capture_output=True).returncode == 0
    assert ours_zip(archive) == (data, None, False)


def test_pigz_k_and_fgzip_k_entries(pigz_bin, tmp_path):
    data = text_like(300_000, 3)
    (tmp_path / "x").write_bytes(data)
    subprocess.run([pigz_bin, "-K", "-k", str(tmp_path / "x")], check=True)
    assert ours_zip((tmp_path / "x.zip").read_bytes()) == (data, None, False)
    deflated = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflated.compress(data) + deflated.flush()
    head = gz.zip_local_header(b"x", 0)
    archive = head + body + gz.zip_trailer(b"x", 0, zlib.crc32(data), len(body), len(data), len(head))
    assert ours_zip(archive) == (data, None, False)


def test_descriptors_without_signature(gzip_bin):
    data = b"no signature" * 1000
    deflated = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflated.compress(data) + deflated.flush()
    head = gz.zip_local_header(b"x", 0)
    descriptor = (zlib.crc32(data)).to_bytes(4, "little") + len(body).to_bytes(4, "little") \
        + len(data).to_bytes(4, "little")
    assert ours_zip(head + body + descriptor + b"PK\x01\x02rest") == (data, None, False)


def test_second_entry_encrypted_and_other_methods(zip_bin, gzip_bin, tmp_path):
    data = text_like(50_000, 4)
    two = zipped(zip_bin, tmp_path, data)
    (tmp_path / "other").write_bytes(b"second")
    subprocess.run([zip_bin, "-q", str(tmp_path / "out.zip"), "other"], cwd=tmp_path, check=True)
    archive = (tmp_path / "out.zip").read_bytes()
    assert ours_zip(archive) == (data, None, True) and gzips(gzip_bin, archive)[2]
    encrypted = zipped(zip_bin, tmp_path, data, "-e", "-P", "secret")
    assert ours_zip(encrypted) == (b"", "encrypted file -- use unzip", False)
    assert "encrypted file -- use unzip" in subprocess.run([gzip_bin, "-dc"], input=encrypted,
                                                           capture_output=True).stderr.decode()
    bzipped = bytearray(two)
    bzipped[8] = 12
    assert ours_zip(bytes(bzipped)) == (b"", reason(faults.ZipMethod()), False) == gzips(gzip_bin, bytes(bzipped))
    for cut in (3, 20, 33):
        assert ours_zip(two[:cut])[1] == "not a valid zip file" and gzips(gzip_bin, two[:cut])[1] in (
            "not a valid zip file", UNEXPECTED_EOF, "not in gzip format")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 5), stored=st.booleans(), at=st.integers(0, 10**6), change=st.integers(1, 255),
       cut=st.booleans())
def test_damaged_zip_gets_gzips_verdict(zip_bin, gzip_bin, tmp_path, seed, stored, at, change, cut):
    """Damage past the local header (gzip's own checks of the header are looser than a parse)."""
    archive = zipped(zip_bin, tmp_path, text_like(20_000, seed), *(("-0",) if stored else ()))
    start = zip_entry.parse_local_header(archive).length
    at = start + at % (len(archive) - start)
    damaged = archive[:at] if cut else archive[:at] + bytes([archive[at] ^ change]) + archive[at + 1:]
    same_verdict(ours_zip(damaged, seed), gzips(gzip_bin, damaged))
