"""pigz's options: what fgzip writes with them is read back by pigz (and gzip / zipfile)."""

from __future__ import annotations

import gzip
import io
import zipfile

import pytest

from conftest import fgzip, run, text_like, tool
from helpers import peak
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


@pytest.mark.parametrize("args", [["-b", "8"], ["-p", "0"], ["-dK", "x.zip"], ["-b", "524289"], ["-b", "99999999"],
                                  ["-p", "1073741824"]])
def test_bad_pigz_parameters_are_errors(args):
    result = fgzip(*args, input=b"")
    assert result.returncode == 1 and result.stderr.startswith(b"fgzip: ") and b"Traceback" not in result.stderr
    assert b"internal error" not in result.stderr


def test_the_largest_block_and_thread_count_pigz_takes_work(pigz_bin):
    assert run([pigz_bin, "-b", "524288", "-c"], input=b"abc").returncode == 0
    assert run([pigz_bin, "-b", "524289", "-c"], input=b"abc").returncode != 0
    assert gzip.decompress(fgzip("-b", "524288", "-c", input=DATA, check=True).stdout) == DATA
    assert fgzip("-b", "524289", "-c", input=b"abc").stderr == b"fgzip: block size too large: 524289\n"
    assert run([pigz_bin, "-p", "1073741823", "-c"], input=b"abc").returncode == 0
    assert run([pigz_bin, "-p", "1073741824", "-c"], input=b"abc").returncode != 0
    assert gzip.decompress(fgzip("-p", "1073741823", "-c", input=DATA, check=True).stdout) == DATA
    assert fgzip("-p", "99999999999", "-c", input=b"abc").stderr == b"fgzip: too many processes: 99999999999\n"


@pytest.mark.parametrize("args, made", [(["-S", ".x", "-z"], "a.zz"), (["-z", "-S", ".x"], "a.x"),
                                        (["-S", ".x", "-K"], "a.zip"), (["-K", "-S", ".x"], "a.x")])
def test_the_last_of_suffix_zlib_and_zip_names_the_output_as_in_pigz(tmp_path, pigz_bin, args, made):
    for pigz in ([pigz_bin], None):
        put(tmp_path, "a", DATA)
        (run([*pigz, *args, "a"], cwd=tmp_path, check=True) if pigz else fgzip(*args, "a", cwd=tmp_path, check=True))
        assert sorted(p.name for p in tmp_path.iterdir()) == [made]
        (tmp_path / made).unlink()


def test_the_largest_block_on_a_small_input_commits_no_block_of_memory(tmp_path, pigz_bin):
    """A 512 MiB block is read into memory the kernel provides only where the read writes:
    pigz runs this in a few MB, and fgzip used to zero-fill the whole block first."""
    put(tmp_path, "small", DATA[:5000])
    status, out, err, rss = peak.measured([*tool("fgzip"), "-b", "524288", "-c", tmp_path / "small"])
    assert status == 0 and err == b"" and gzip.decompress(out) == DATA[:5000]
    assert rss < 128 * 2**20, f"{rss:,} bytes resident for a 5 kB input"
    assert peak.measured([pigz_bin, "-b", "524288", "-c", tmp_path / "small"])[3] < 128 * 2**20


@pytest.mark.parametrize("options", [["-dK"], ["-tK"], ["-dz"], ["-dKk"]])
def test_the_output_form_options_are_ignored_when_decompressing_as_pigz_ignores_them(tmp_path, options, pigz_bin):
    """pigz's -K and -z choose what compressing writes; -d, -t (and -l) read any format."""
    results = []
    for name, argv in (("pigz", [pigz_bin]), ("fgzip", tool("fgzip"))):
        where = tmp_path / name
        where.mkdir()
        put(where, "f.gz", gzip.compress(DATA))
        put(where, "g.zip", fgzip("-cK", input=DATA, check=True).stdout)
        result = run([*argv, *options, "f.gz", "g.zip"], cwd=where)
        results.append((result.returncode, result.stdout, sorted(p.name for p in where.iterdir())))
        if "-t" not in options[0]:
            assert (where / "f").read_bytes() == (where / "g").read_bytes() == DATA
    assert results[0] == results[1]
