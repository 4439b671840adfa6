"""The other formats gzip and pigz decompress, as a user meets them: `.Z` files from
compress, pack files, zip files from `zip` and `pigz -K`, and `.zz` files from `pigz -z`,
through fgzip -d, -dc, -t, -l and -cdf, compared with the real gzip (or pigz, for what gzip
does not read): output, messages, exit status and the files left behind."""

from __future__ import annotations

import functools
import io
import os
import random
import subprocess
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import fgzip, run, text_like
from helpers.dropin import assert_same, both, put
from test_formats_pack import packed

TEXT = text_like(300_000, seed=21)
OTHER = text_like(70_000, seed=22)


@functools.cache
def made(kind: str) -> bytes:
    """A sample file as the real tools write it."""
    if kind.startswith("Z"):  # compress -b BITS
        data = {"Z": TEXT, "Z9": TEXT, "Zempty": b"", "Zrandom": random.Random(6).randbytes(50_000)}[kind]
        return run(["compress", "-c", *(["-b", "9"] if kind == "Z9" else [])], input=data).stdout
    if kind == "zz":
        return run(["pigz", "-zc"], input=TEXT, check=True).stdout
    if kind == "pigzzip":
        return run(["pigz", "-Kc"], input=TEXT, check=True).stdout
    if kind == "pack":
        return packed(TEXT)
    if kind == "gz":
        return run(["gzip", "-cn"], input=OTHER, check=True).stdout
    raise KeyError(kind)


@functools.cache
def zipped(*entries: tuple[str, bytes], stored: bool = False, piped: bool = False) -> bytes:
    """A zip file written by Info-ZIP's zip (from a pipe: sizes after the data, zip64)."""
    import tempfile

    with tempfile.TemporaryDirectory() as where:
        if piped:
            return run(["zip", "-q", "-", "-"], input=entries[0][1], cwd=where, check=True).stdout
        for name, data in entries:
            put(Path(where), name, data)
        run(["zip", "-q", *(["-0"] if stored else []), "out.zip", *(n for n, _ in entries)], cwd=where, check=True)
        with open(os.path.join(where, "out.zip"), "rb") as handle:
            return handle.read()


def lzw_files(where):
    put(where, "a.Z", made("Z"))
    put(where, "nine.Z", made("Z9"))
    put(where, "empty.Z", made("Zempty"))
    put(where, "random.Z", made("Zrandom"))
    blob = made("Z")
    put(where, "cut.Z", blob[: len(blob) // 3])
    put(where, "magic.Z", blob[:2])
    put(where, "flags.Z", blob[:2] + bytes([blob[2] | 0x20]) + blob[3:])  # reserved bit: a warning
    put(where, "bits.Z", blob[:2] + bytes([blob[2] & 0xE0 | 17]) + blob[3:])  # 17-bit codes
    bad = bytearray(blob)
    bad[5000:5006] = b"\xff" * 6  # codes past the table
    put(where, "bad.Z", bytes(bad))
    put(where, "first.Z", blob[:3] + b"\xff\xff" + blob[5:])  # a first code above 255
    put(where, "gz-then.Z", made("gz") + blob)  # gzip reads LZW after a member


LZW_NAMES = ["a", "nine", "empty", "random", "cut", "magic", "flags", "bad", "first", "gz-then"]


@pytest.mark.parametrize("mode", [["-d"], ["-dc"], ["-t"], ["-tv"], ["-dv"], ["-l"], ["-lv"]])
@pytest.mark.parametrize("name", LZW_NAMES)
def test_compress_files_as_gzip(tmp_path, mode, name):
    assert_same(tmp_path, [*mode, f"{name}.Z"], lzw_files)


@pytest.mark.parametrize("mode", [["-dk"], ["-dc"], ["-t"], ["-l"]])
def test_lzw_wider_than_16_bits_as_gzip(tmp_path, mode):
    """gzip -d without -k removes such a .Z and leaves an empty output: fgzip keeps the input
    (README, known differences), so only the modes that keep it are compared."""
    assert_same(tmp_path, [*mode, "bits.Z", "a.Z"], lzw_files)


def test_lzw_wider_than_16_bits_keeps_the_input(tmp_path):
    lzw_files(tmp_path)
    result = fgzip("-d", "bits.Z", cwd=tmp_path)
    assert result.returncode == 1 and b"compressed with 17 bits, can only handle 16 bits" in result.stderr
    assert (tmp_path / "bits.Z").exists() and not (tmp_path / "bits").exists()


@pytest.mark.parametrize("args", [["-d"], ["-dv"], ["-t"], ["-cdf"], ["-l"]])
@pytest.mark.parametrize("name", ["a", "flags", "cut", "bad"])
def test_compress_data_on_stdin_as_gzip(tmp_path, args, name):
    holder = tmp_path / "in"
    holder.mkdir()
    lzw_files(holder)
    assert_same(tmp_path, args, lambda where: None, input=(holder / f"{name}.Z").read_bytes())


def test_several_files_and_the_name_without_suffix(tmp_path):
    """gzip -d NAME finds NAME.Z; -l totals over formats; one file's error leaves the others."""
    for i, args in enumerate((["-d", "a", "nine.Z", "random.Z"], ["-lv", "a.Z", "empty.Z", "nine.Z"],
                              ["-l", "a.Z", "bad.Z", "nine.Z"], ["-t", "first.Z", "a.Z"], ["-tq", "flags.Z", "a.Z"])):
        (tmp_path / str(i)).mkdir()
        assert_same(tmp_path / str(i), args, lzw_files)


def pack_files(where):
    blob = made("pack")
    put(where, "a.z", blob)
    put(where, "cut.z", blob[: len(blob) // 2])
    put(where, "header.z", blob[:6])
    put(where, "long.z", blob[:2] + (len(TEXT) + 1).to_bytes(4, "big") + blob[6:])  # length error
    put(where, "bits.z", blob[:6] + b"\x1a" + blob[7:])  # longest code 26 bits
    put(where, "two.z", blob + made("gz"))  # a member may follow
    put(where, "junk.z", blob + b"junk")


@pytest.mark.parametrize("mode", [["-d"], ["-dc"], ["-t"], ["-tv"], ["-l"], ["-lv"]])
@pytest.mark.parametrize("name", ["a", "cut", "header", "long", "bits", "two", "junk"])
def test_pack_files_as_gzip(tmp_path, mode, name):
    assert_same(tmp_path, [*mode, f"{name}.z", "a.z"], pack_files)


def zip_files(where):
    single = zipped(("entry.txt", TEXT))
    put(where, "one.zip", single)
    put(where, "stored.zip", zipped(("entry.txt", OTHER), stored=True))
    put(where, "piped.zip", zipped(("-", TEXT), piped=True))
    put(where, "two.zip", zipped(("first", OTHER), ("second", TEXT)))
    put(where, "big-two.zip", zipped(("first", random.Random(5).randbytes(300_000)), ("second", TEXT)))
    put(where, "late-two.zip", zipped(("first", OTHER), ("second", random.Random(7).randbytes(400_000))))
    put(where, "cut.zip", single[: len(single) // 2])
    put(where, "header.zip", single[:20])
    crc = bytearray(single)
    crc[14] ^= 1  # the local header's CRC
    put(where, "crc.zip", bytes(crc))
    method = bytearray(single)
    method[8] = 12  # bzip2
    put(where, "method.zip", bytes(method))
    encrypted = bytearray(single)
    encrypted[6] |= 1
    put(where, "encrypted.zip", bytes(encrypted))
    stored = bytearray(zipped(("entry.txt", OTHER), stored=True))
    stored[18] ^= 1  # compressed size no longer the size
    put(where, "sizes.zip", bytes(stored))


ZIP_NAMES = ["one", "stored", "two", "big-two", "late-two", "cut", "header", "crc", "method", "encrypted", "sizes"]


@pytest.mark.parametrize("mode", [["-dc"], ["-t"], ["-tv"], ["-l"], ["-lv"], ["-dcv"], ["-d", "-S", ".zip"],
                                  ["-dkv", "-S", ".zip"]])
@pytest.mark.parametrize("name", ZIP_NAMES)
def test_zip_files_as_gzip(tmp_path, mode, name):
    assert_same(tmp_path, [*mode, f"{name}.zip", "one.zip"], zip_files)


@pytest.mark.parametrize("name", ["one", "stored", "two"])
def test_zip_on_stdin_as_gzip(tmp_path, name):
    holder = tmp_path / "in"
    holder.mkdir()
    zip_files(holder)
    for args in (["-d"], ["-tv"], ["-cdf"], ["-l"]):
        (tmp_path / "-".join(args)).mkdir()
        assert_same(tmp_path / "-".join(args), args, lambda where: None, input=(holder / f"{name}.zip").read_bytes())


def pigz_files(where):
    put(where, "a.zz", made("zz"))
    put(where, "k.zip", made("pigzzip"))
    put(where, "piped.zip", zipped(("-", TEXT), piped=True))
    put(where, "upper.ZIP", zipped(("entry.txt", OTHER)))


@pytest.mark.parametrize("args", [["-d", "a.zz"], ["-dk", "a.zz"], ["-dc", "a.zz"], ["-t", "a.zz"], ["-d", "a"],
                                  ["-d", "k.zip"], ["-dc", "k.zip"], ["-t", "k.zip"], ["-d", "piped.zip"],
                                  ["-d", "upper.ZIP"], ["-dcf", "a.zz"], ["-d", "-f", "a.zz", "k.zip"]])
def test_zlib_and_zip_files_as_pigz(tmp_path, args):
    """pigz -d's own formats and suffixes (gzip reads neither .zz nor .zip names, and misreads
    pigz -K's zip64 sizes): same data, files and status as pigz; silence where pigz is silent."""
    (theirs, their_state), (ours, our_state) = both(tmp_path, args, pigz_files, reference="pigz")
    assert (ours.returncode, ours.stdout, ours.stderr) == (theirs.returncode, theirs.stdout, theirs.stderr)
    assert our_state == their_state


def test_zip_entry_name_is_not_restored_as_gzip(tmp_path):
    """gzip -dN takes the output's name from the zip's name, never the entry's (pigz does)."""
    assert_same(tmp_path, ["-dN", "-S", ".zip", "one.zip"], zip_files)


def test_damaged_zlib_is_reported_in_gzips_words_where_pigz_fails(tmp_path, pigz_bin):
    blob = made("zz")
    cases = {
        "cut.zz": (blob[:len(blob) // 2], "unexpected end of file"),
        "trailer.zz": (blob[:-2], "unexpected end of file"),
        "adler.zz": (blob[:-1] + bytes([blob[-1] ^ 1]), "invalid compressed data--crc error"),
        "bad.zz": (blob[:2] + b"\xff" * 20, "not in gzip format"),  # before any output: see below
    }
    for name, (data, words) in cases.items():
        put(tmp_path, name, data)
        theirs = run([pigz_bin, "-d", name], cwd=tmp_path)
        ours = fgzip("-d", name, cwd=tmp_path)
        assert theirs.returncode == ours.returncode == 1
        assert ours.stderr == f"\nfgzip: {name}: {words}\n".encode()
        assert (tmp_path / name).exists() and not (tmp_path / name[:-3]).exists()


def test_what_follows_a_zlib_stream_is_read_as_gzip_reads_what_follows_a_member(tmp_path):
    """pigz ignores what follows a zlib stream (a warning under -v); fgzip reads it as gzip
    reads what follows a member: members decoded, garbage a warning (status 2), zeros silent
    unless -v, and -cdf copies it."""
    blob = made("zz")
    garbage = fgzip("-dc", input=blob + b"junk")
    assert (garbage.returncode, garbage.stdout) == (2, TEXT)
    assert garbage.stderr == b"\nfgzip: stdin: decompression OK, trailing garbage ignored\n"
    zeros = fgzip("-dc", input=blob + bytes(10))
    assert (zeros.returncode, zeros.stdout, zeros.stderr) == (0, TEXT, b"")
    member = fgzip("-dc", input=blob + run(["gzip", "-c"], input=OTHER).stdout)
    assert (member.returncode, member.stdout, member.stderr) == (0, TEXT + OTHER, b"")
    copied = fgzip("-cdf", input=blob + b"plain text\n")
    assert (copied.returncode, copied.stdout, copied.stderr) == (0, TEXT + b"plain text\n", b"")
    stray = fgzip("-dc", input=blob + b"x")  # gzip's reading of one stray byte after a member
    assert (stray.returncode, stray.stderr) == (1, b"\nfgzip: stdin: unexpected end of file\n")


@pytest.mark.parametrize("text", [b"x^ looks like a zlib header\n", b"HK, so does this\n", b"x"])
def test_cat_mode_copies_text_that_only_looks_like_zlib_as_gzip(tmp_path, text):
    """gzip -cdf (zcat -f) copies what it cannot read; a zlib header by chance is no zlib."""
    assert_same(tmp_path, ["-cdf"], lambda where: None, input=text)
    (tmp_path / "v").mkdir()
    assert_same(tmp_path / "v", ["-cdfv", "t"], lambda where: put(where, "t", text))


@pytest.mark.parametrize("mode", [["-d"], ["-t"], ["-l"], ["-dc"]])
def test_a_file_that_only_starts_like_zlib_is_not_gzip_and_the_run_goes_on(tmp_path, mode):
    """One two-byte start in 31 passes a zlib header's check ("HK", "x^"): such a file that
    fails before any output is "not in gzip format", as gzip calls it, and the next file is
    still decompressed (it once ended the run as "format violated")."""
    def files(where):
        put(where, "a.gz", b"HK stock prices\n")
        put(where, "b.gz", b"x^ a line of text\n")
        put(where, "c.gz", run(["gzip", "-c"], input=OTHER).stdout)

    assert_same(tmp_path, [*mode, "a.gz", "b.gz", "c.gz"], files, ratios=False)


def test_zlib_listing_in_gzips_layout(tmp_path):
    """gzip -l does not read zlib; fgzip lists it in gzip's layout, with the 2 header and 4
    Adler-32 bytes left out of the ratio as a gzip header and trailer are."""
    put(tmp_path, "a.zz", made("zz"))
    result = fgzip("-l", "a.zz", cwd=tmp_path, check=True)
    size = len(made("zz"))
    ratio = 100.0 * (len(TEXT) - (size - 6)) / len(TEXT)
    assert result.stdout.decode().splitlines()[1].split() == [str(size), str(len(TEXT)), f"{ratio:.1f}%", "a.zz"]


def test_compressing_keeps_pigz_suffixes_as_names(tmp_path):
    """Only decompression takes .zz and .zip off: gzip compresses a.zz into a.zz.gz."""
    assert_same(tmp_path, ["-k", "x.zz", "y.zip"], lambda where: (put(where, "x.zz", b"x" * 100),
                                                                   put(where, "y.zip", b"y" * 100)))


def test_zip_output_of_fgzip_reads_back(tmp_path):
    """fgzip -K writes what fgzip -d (and zipfile) read: a round trip through the zip form."""
    put(tmp_path, "a", TEXT)
    fgzip("-K", "a", cwd=tmp_path, check=True)
    assert zipfile.ZipFile(io.BytesIO((tmp_path / "a.zip").read_bytes())).read("a") == TEXT
    fgzip("-d", "a.zip", cwd=tmp_path, check=True)
    assert (tmp_path / "a").read_bytes() == TEXT and not (tmp_path / "a.zip").exists()


def test_only_the_reader_needed_is_imported():
    """A .Z decodes without the zip and zlib readers, and gzip input without any of them."""
    import sys

    probe = ("import sys; from octoray.cli.fgzip import main; status = main(['-dc']); sys.stdout.flush();"
             "sys.stderr.write(repr(sorted(m for m in sys.modules if m.split('.')[-1]"
             " in ('foreign', 'lzw', 'pack', 'zip_entry', 'zlib_stream'))))")
    for data, loaded in ((made("Z"), "['octoray.formats.lzw', 'octoray.jobs.foreign']"),
                         (run(["gzip", "-c"], input=TEXT).stdout, "[]")):
        result = subprocess.run([sys.executable, "-c", probe], input=data, capture_output=True, timeout=60)
        assert result.returncode == 0 and result.stdout == TEXT
        assert result.stderr.decode() == loaded


SMALL = text_like(3_000, seed=23)


@functools.cache
def seed_file(kind: str) -> bytes:
    """Small sound inputs of each format, for the damage fuzz."""
    if kind == "Z":
        return run(["compress", "-c"], input=SMALL).stdout
    if kind == "pack":
        return packed(SMALL)
    if kind == "zip":
        return zipped(("entry", SMALL))
    return run(["pigz", "-zc"], input=SMALL, check=True).stdout


@st.composite
def damaged_input(draw):
    kind = draw(st.sampled_from(["Z", "pack", "zip", "zz"]))
    data = bytearray(seed_file(kind))
    for _ in range(draw(st.integers(0, 3))):
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    data = data[: draw(st.integers(0, len(data)))]
    if kind == "zz":  # what follows a zlib stream is read as gzip reads it, not as pigz does
        return kind, bytes(data)
    return kind, bytes(data) + draw(st.binary(max_size=8))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(damaged_input())
def test_damaged_input_of_any_format_as_the_reference_reads_it(case):
    """Any damage, any cut: gzip's output, words and status (pigz's output and verdict for
    zlib, which gzip does not read); never a traceback.
    Damage that leaves no zlib header is gzip's "not in gzip format" (seen in the other tests)."""
    kind, blob = case
    for mode in (["-dc"], ["-t"]):
        ours = fgzip(*mode, input=blob, timeout=30)
        assert b"Traceback" not in ours.stderr and ours.returncode in (0, 1, 2)
        if kind == "zz" and zlib_stream_header(blob):
            theirs = run(["pigz", *mode], input=blob, timeout=30)
            assert (ours.returncode == 0) == (theirs.returncode == 0)
            if ours.returncode == 0:
                assert ours.stdout == theirs.stdout
        elif kind != "zz":
            theirs = run(["gzip", *mode], input=blob, timeout=30)
            assert ours.returncode == theirs.returncode
            if not any(b"format violated" in result.stderr for result in (ours, theirs)):
                # ISA-L refuses some code tables at once that gzip's inflate reads on with,
                # failing later (as the format modules' tests allow): both refuse the input
                assert ours.stderr.replace(b"fgzip", b"gzip") == theirs.stderr
            if ours.returncode == 1:  # what came out before the fault: inflaters stop a few bytes apart
                shorter = min(len(ours.stdout), len(theirs.stdout))
                assert ours.stdout[:shorter] == theirs.stdout[:shorter]
            else:
                assert ours.stdout == theirs.stdout


def zlib_stream_header(blob: bytes) -> bool:
    from octoray.formats.zlib_stream import is_header

    return is_header(blob[:2])


def test_every_fault_and_notice_has_gzips_words():
    """Each concrete fault type the jobs raise is worded in report.py's table (a missing one
    would end a run as an internal error)."""
    import inspect

    from octoray.cli.fgzip import report
    from octoray.formats import faults

    abstract = {faults.Fault, faults.HeaderFault, faults.Notice}
    for _, kind in inspect.getmembers(faults, inspect.isclass):
        if issubclass(kind, (faults.Fault, faults.Notice)) and kind not in abstract:
            fields = inspect.signature(kind).parameters if "__init__" in vars(kind) else {}
            fault = kind(*[1] * len(fields))
            text = report.fault_text("f", fault)
            assert text.lstrip("\n").startswith(("fgzip: f", "len 1")), (kind, text)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.binary(max_size=20_000) | st.builds(text_like, st.integers(0, 200_000), st.integers(0, 9)))
def test_any_data_written_by_the_other_tools_reads_back(data):
    """Whatever compress, zip (from a pipe) and pigz -z wrote, fgzip -dc gives back."""
    for blob in (run(["compress", "-c"], input=data).stdout, zipped(("-", data), piped=True),
                 run(["pigz", "-zc"], input=data, check=True).stdout):
        result = fgzip("-dc", input=blob, timeout=30)
        assert (result.returncode, result.stderr) == (0, b"") and result.stdout == data
