"""pigz's options: what fgzip writes with them is read back by pigz (and gzip / zipfile)."""

from __future__ import annotations

import io
import zipfile

import pytest

from conftest import fgzip, run, text_like
from helpers.dropin import put

DATA = text_like(600_000, seed=11)


@pytest.mark.parametrize("options", [["-0"], ["-11"], ["-H"], ["-U"], ["-R"], ["-i"], ["-p", "1"], ["-b", "32"],
                                     ["-T"], ["-m"], ["-M"], ["-Y"], ["-9", "-i", "-b", "64"], ["-1", "-R", "-b", "64"]])
def test_pigz_options_write_gzip_that_pigz_and_gzip_read(tmp_path, options, pigz_bin, gzip_bin):
    out = fgzip("-c", *options, input=DATA, check=True).stdout
    assert run([pigz_bin, "-dc"], input=out, check=True).stdout == DATA
    assert run([gzip_bin, "-dc"], input=out, check=True).stdout == DATA


def test_level_zero_stores_and_eleven_is_smaller(tmp_path):
    stored = fgzip("-c", "-0", input=DATA, check=True).stdout
    best = fgzip("-c", "-11", input=DATA, check=True).stdout
    assert len(stored) > len(DATA) > len(best)
    assert best[8] == 2  # XFL: best compression


def test_mtime_options(tmp_path):
    put(tmp_path, "a", DATA)
    assert fgzip("-c", "-T", "a", cwd=tmp_path, check=True).stdout[4:8] == b"\0" * 4
    assert fgzip("-c", "-m", "-M", "a", cwd=tmp_path, check=True).stdout[4:8] != b"\0" * 4


def test_comment_in_header(tmp_path, gzip_bin):
    out = fgzip("-c", "-C", "hello there", input=b"abc", check=True).stdout
    assert out[3] & 16 and b"hello there\0" in out[:40]
    assert run([gzip_bin, "-dc"], input=out, check=True).stdout == b"abc"


def test_zlib_output_as_pigz(tmp_path, pigz_bin):
    import zlib

    put(tmp_path, "a", DATA)
    fgzip("-z", "a", cwd=tmp_path, check=True)
    blob = (tmp_path / "a.zz").read_bytes()
    assert zlib.decompress(blob) == DATA
    assert run([pigz_bin, "-dc", "a.zz"], cwd=tmp_path, check=True).stdout == DATA
    assert not (tmp_path / "a").exists()


def test_zip_output_as_pigz(tmp_path, pigz_bin):
    put(tmp_path, "a", DATA)
    fgzip("-K", "a", cwd=tmp_path, check=True)
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        assert archive.namelist() == ["a"] and archive.read("a") == DATA
    assert run([pigz_bin, "-dc", "a.zip"], cwd=tmp_path, check=True).stdout == DATA
    piped = fgzip("-K", "-A", "named", input=b"xyz", check=True).stdout
    with zipfile.ZipFile(io.BytesIO(piped)) as archive:
        assert archive.read("named") == b"xyz"


def test_rsyncable_output_resynchronises():
    """An edit near the start changes the compressed output near it only."""
    base = text_like(6_000_000, seed=12)
    edited = base[:1000] + b"EDIT" + base[1000:]
    one = fgzip("-c", "-n", "-R", "-b", "64", input=base, check=True).stdout
    two = fgzip("-c", "-n", "-R", "-b", "64", input=edited, check=True).stdout
    assert one[-500_000:-8] == two[-500_000:-8]


@pytest.mark.parametrize("args", [["-b", "8"], ["-p", "0"], ["-dK", "x.zip"]])
def test_bad_pigz_parameters_are_errors(args):
    result = fgzip(*args, input=b"")
    assert result.returncode == 1 and result.stderr.startswith(b"fgzip: ") and b"Traceback" not in result.stderr
