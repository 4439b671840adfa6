"""Round trips a user relies on: fgzip's output read by gzip, pigz and Python, and back."""

from __future__ import annotations

import gzip
import os
import zlib

import pytest

from conftest import fgzip, run, text_like, tool

from octoray.formats import gzip as gz


@pytest.mark.parametrize("level", ["-1", "-6", "-9"])
def test_stdin_to_stdout_gunzips(sample, level, gzip_bin):
    _, data = sample
    compressed = fgzip(level, input=data, check=True).stdout
    assert run([gzip_bin, "-dc"], input=compressed, check=True).stdout == data


def test_output_is_a_single_member(sample):
    _, data = sample
    compressed = fgzip("-b", "64", input=data, check=True).stdout
    d = zlib.decompressobj(31)
    assert d.decompress(compressed) == data
    assert d.eof and d.unused_data == b""  # one member, nothing after it


def test_pigz_reads_it_and_it_reads_pigz(sample, pigz_bin):
    _, data = sample
    assert run([pigz_bin, "-dc"], input=fgzip(input=data, check=True).stdout, check=True).stdout == data
    from_pigz = run([pigz_bin, "-p", "2", "-b", "32"], input=data, check=True).stdout
    assert fgzip("-dc", input=from_pigz, check=True).stdout == data


def test_reads_gzip_output_at_every_level(gzip_bin):
    data = text_like(300_000)
    for level in ("-1", "-6", "-9"):
        compressed = run([gzip_bin, level], input=data, check=True).stdout
        assert fgzip("-d", input=compressed, check=True).stdout == data


def test_file_round_trip_keeps_name_size_mode_and_mtime(tmp_path, gzip_bin):
    data = text_like(2_500_000)
    path = tmp_path / "notes.txt"
    path.write_bytes(data)
    os.chmod(path, 0o640)
    os.utime(path, (1_600_000_000, 1_600_000_000))
    fgzip("-k", path, check=True)
    packed = tmp_path / "notes.txt.gz"
    assert path.read_bytes() == data
    assert run([gzip_bin, "-t", packed]).returncode == 0
    listing = run([gzip_bin, "-l", packed], check=True).stdout.decode().splitlines()[1].split()
    assert int(listing[0]) == packed.stat().st_size and int(listing[1]) == len(data)
    assert packed.stat().st_mode & 0o777 == 0o640 and packed.stat().st_mtime == 1_600_000_000
    with gzip.open(packed) as f:
        assert f.read() == data
    header = gz.parse_header(packed.read_bytes())
    assert header.flags & gz.FLAG_NAME and header.name == b"notes.txt"  # FNAME stored
    assert header.mtime == 1_600_000_000  # MTIME stored

    path.unlink()
    fgzip("-d", packed, check=True)
    assert path.read_bytes() == data and not packed.exists()
    assert path.stat().st_mtime == 1_600_000_000


def test_keep_then_gzip_test_and_list_agree_on_every_kind_of_input(sample, tmp_path, gzip_bin):
    name, data = sample
    path = tmp_path / name
    path.write_bytes(data)
    fgzip("-k", path, check=True)
    packed = path.with_name(name + ".gz")
    assert run([gzip_bin, "-t", packed]).returncode == 0
    row = run([gzip_bin, "-l", packed], check=True).stdout.decode().splitlines()[1].split()
    assert (int(row[0]), int(row[1])) == (packed.stat().st_size, len(data))
    assert run([gzip_bin, "-dc", packed], check=True).stdout == data


def test_no_name_stores_neither_name_nor_time(tmp_path):
    path = tmp_path / "a"
    path.write_bytes(b"abc" * 1000)
    out = fgzip("-cn", path, check=True).stdout
    assert out[3] & 8 == 0 and out[4:8] == b"\0\0\0\0"


def test_empty_stdin_matches_gzip_byte_for_byte(gzip_bin):
    assert fgzip(input=b"", check=True).stdout == run([gzip_bin], input=b"", check=True).stdout


@pytest.mark.parametrize("options", [["-i"], ["-p", "1"], ["-p", "4", "-b", "32"], ["-b", "4096"], ["-3"]])
def test_chunking_options_round_trip(options, gzip_bin):
    data = text_like(3_000_000, seed=3)
    compressed = fgzip(*options, input=data, check=True).stdout
    assert run([gzip_bin, "-dc"], input=compressed, check=True).stdout == data


def test_chunks_are_independent_with_or_without_i():
    data = text_like(2_000_000, seed=4)
    assert fgzip("-1", "-b", "32", input=data, check=True).stdout == \
        fgzip("-1", "-b", "32", "-i", input=data, check=True).stdout


@pytest.mark.parametrize("level", ["-1", "-2", "-3", "-4", "-6", "-9"])
def test_size_stays_within_one_percent_of_gzip(level, gzip_bin):
    data = text_like(4_000_000, seed=5)
    ours = len(fgzip(level, input=data, check=True).stdout)
    theirs = len(run([gzip_bin, level], input=data, check=True).stdout)
    assert ours <= 1.01 * theirs, (ours, theirs)


def test_concatenated_members_decompress_as_one(gzip_bin):
    a, b = b"first\n" * 1000, b"second\n" * 1000
    both = run([gzip_bin], input=a, check=True).stdout + fgzip(input=b, check=True).stdout
    assert fgzip("-dc", input=both, check=True).stdout == a + b


def test_several_files_with_trailing_garbage_each_decompress(tmp_path, gzip_bin):
    names = []
    for i in range(3):
        data = os.urandom(3_000_000) if i == 1 else b"line %d\n" % i * 50_000
        packed = run([gzip_bin, "-c"], input=data, check=True).stdout
        path = tmp_path / f"f{i}.gz"
        path.write_bytes(packed + b"\0\0\0garbage" * (i + 1))
        names.append((path, data))
    result = fgzip("-dc", *[str(p) for p, _ in names])
    assert result.stdout == b"".join(d for _, d in names)
    assert result.returncode == 2 and result.stderr.count(b"trailing garbage ignored") == 3


# --- members that fgzip -d decodes on every core (octoray.formats.gzip_chunks) ----------------

def layout_of(member: bytes):
    from octoray.formats import gzip_chunks

    return gzip_chunks.parse_layout(member)


def test_chunked_output_reads_everywhere_with_an_index_in_files(tmp_path, gzip_bin, pigz_bin):
    """A file fgzip writes announces its independent chunks and indexes them; what it writes to
    a pipe announces them without an index.  gzip, pigz, Python and zlib read both."""
    data = text_like(3_000_000, seed=21)
    path = tmp_path / "big"
    path.write_bytes(data)
    fgzip("-k", "-b", "64", path, check=True)
    in_file = (tmp_path / "big.gz").read_bytes()
    fg = " ".join(map(str, tool("fgzip")))
    piped = run(["sh", "-c", f"{fg} -b 64 < {path} | cat"], check=True).stdout
    chunks = -(-len(data) // (64 << 10))
    indexed, unindexed = layout_of(in_file), layout_of(piped)
    assert indexed.chunk_size == unindexed.chunk_size == 64 << 10
    assert len(indexed.sizes) == chunks and unindexed.sizes == ()
    body = len(in_file) - gz.parse_header(in_file).length - 8
    assert sum(indexed.sizes) == body  # the index adds up to the deflate stream
    for packed, where in ((in_file, tmp_path / "big.gz"), (piped, tmp_path / "piped.gz")):
        where.write_bytes(packed)
        assert run([gzip_bin, "-t", where]).returncode == 0
        assert run([pigz_bin, "-t", where]).returncode == 0
        listed = run([gzip_bin, "-l", where], check=True).stdout.decode().splitlines()[1].split()
        assert int(listed[0]) == len(packed) and int(listed[1]) == len(data)
        assert gzip.decompress(packed) == data and zlib.decompress(packed, 31) == data
        assert fgzip("-dc", where, check=True).stdout == data
        assert fgzip("-dc", "-p", "1", where, check=True).stdout == data


@pytest.mark.parametrize("options", [["-1"], ["-2"], ["-3"], ["-6"], ["-9"], ["-0"], ["-11"], ["-H"], ["-U"],
                                     ["--rsyncable"]])
def test_every_level_announces_its_independent_chunks(options):
    data = text_like(600_000, seed=22)
    packed = fgzip(*options, "-b", "64", input=data, check=True).stdout
    layout = layout_of(packed)
    assert layout.chunk_size == (4 if options == ["--rsyncable"] else 1) * 64 << 10
    assert layout.variable == (options == ["--rsyncable"])
    assert fgzip("-dc", input=packed, check=True).stdout == data
    assert fgzip("-dc", "-p", "1", input=packed, check=True).stdout == data


def test_a_single_chunk_gets_gzips_plain_header(gzip_bin):
    data = text_like(50_000, seed=23)
    packed = fgzip("-n", input=data, check=True).stdout
    assert layout_of(packed) is None
    assert packed[:10] == run([gzip_bin, "-n"], input=data, check=True).stdout[:10]


def test_each_member_written_to_one_file_gets_its_own_index(tmp_path):
    """fgzip -c a b > out: two members, each index written at its own member's place; >> (append)
    cannot be written into afterwards, so its member has no index."""
    a, b = text_like(400_000, seed=24), text_like(300_000, seed=25)
    (tmp_path / "a").write_bytes(a)
    (tmp_path / "b").write_bytes(b)
    fg = " ".join(map(str, tool("fgzip")))
    run(["sh", "-c", f"{fg} -b 64 -c a b > out && {fg} -b 64 -c a >> out"], cwd=tmp_path, check=True)
    out = (tmp_path / "out").read_bytes()
    first = zlib.decompressobj(31)
    assert first.decompress(out) == a
    second_member = first.unused_data
    second = zlib.decompressobj(31)
    assert second.decompress(second_member) == b
    third_member = second.unused_data
    assert len(layout_of(out).sizes) == 7 and len(layout_of(second_member).sizes) == 5
    assert layout_of(third_member).sizes == ()
    assert fgzip("-dc", tmp_path / "out", check=True).stdout == a + b + a
