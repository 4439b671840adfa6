"""gzip -l: the listing a user reads, compared with GNU gzip 1.12 byte for byte."""

from __future__ import annotations

import pytest

from conftest import fgzip, run, text_like
from helpers.dropin import FIXED_TIME, assert_same, gz_bytes, put, run_in_copies

from octoray.formats import gzip_chunks

A = text_like(4000, seed=3)
B = text_like(1900, seed=4)


def files(where):
    """Files as gzip made them (its exact sizes matter to the listing)."""
    a, b = gz_bytes(A, b"a", FIXED_TIME), gz_bytes(B, b"b", FIXED_TIME)
    put(where, "a.gz", a)
    put(where, "b.gz", b)
    put(where, "m.gz", a + a)  # two members: gzip lists the last ISIZE and no header bytes
    put(where, "e.gz", gz_bytes(b""))
    put(where, "z.gz", a + bytes(10))
    put(where, "g.gz", a + b"garbage")
    put(where, "t.gz", a[: len(a) // 2])
    put(where, "c.gz", a[:-6] + bytes([a[-6] ^ 0xFF]) + a[-5:])
    put(where, "n.gz", b"not gzip at all\n")
    put(where, "p.tgz", b)
    put(where, "renamed.gz", a)
    put(where, "sub dir/é.gz", b)


@pytest.mark.parametrize("args", [
    ["-l", "a.gz"],
    ["-l", "a.gz", "b.gz"],  # totals row
    ["-lv", "a.gz", "b.gz", "m.gz", "e.gz"],  # method, crc, date columns
    ["-lq", "a.gz", "b.gz"],  # no heading, no totals
    ["-lqv", "a.gz"],
    ["-l", "p.tgz", "sub dir/é.gz"],  # .tgz lists as .tar; spaces and non-ASCII
    ["-l", "e.gz", "e.gz"],  # empty members: no totals
    ["-l", "z.gz"],  # trailing zeros: no row, status 0
    ["-lv", "z.gz", "a.gz"],  # with -v a warning, status 2
    ["-l", "a.gz", "g.gz"],  # trailing garbage: totals printed twice, as gzip does
    ["-l", "a.gz", "c.gz", "b.gz"],  # crc error: a totals row after it, then on
    ["-lq", "a.gz", "c.gz", "b.gz"],
    ["-l", "a.gz", "t.gz", "b.gz"],  # truncated: gzip stops there
    ["-l", "n.gz", "a.gz"],
    ["-l", "a.gz", "n.gz"],  # a file that is not gzip zeroes header_bytes: totals' ratio differs from a's
    ["-lv", "a.gz", "n.gz", "b.gz"],
    ["-l", "nosuch", "a.gz"],  # nosuch.gz is named
    ["-lN", "renamed.gz"],  # header name
    ["-lvN", "renamed.gz"],  # header time
    ["-l", "m.gz", "a.gz"],
    ["-ldt", "a.gz"],
])
def test_list_matches_gzip(tmp_path, args):
    assert_same(tmp_path, args, files)


def test_list_stdin_and_pipe(tmp_path):
    blob = gz_bytes(A, b"a", FIXED_TIME)
    ours = fgzip("-lv", input=blob)
    theirs = run(["gzip", "-lv"], input=blob, env={"TZ": "UTC", "PATH": "/usr/bin:/bin"})
    assert ours.returncode == theirs.returncode == 0
    assert ours.stdout == theirs.stdout  # "stdout", date of a pipe (epoch)


def test_list_recursive(tmp_path):
    def setup(where):
        files(where)
        put(where, "d/x/y.gz", gz_bytes(B))
        put(where, "d/plain", b"no suffix")
    assert_same(tmp_path, ["-lr", "d"], setup)


def test_list_of_fgzip_output(tmp_path):
    """A file fgzip wrote (one member of many chunks, announced in its header's extra field)
    lists as gzip lists it; gzip -v adds a note that it ignores the extra field, which fgzip
    reads (README: Known differences)."""
    def setup(where):
        put(where, "big", text_like(3_000_000, seed=9))
        fgzip("-k", "-b", "64", "big", cwd=where, check=True)
    (theirs, _), (ours, _) = run_in_copies(tmp_path, ["-lv", "big.gz"], setup)
    assert ours.returncode == theirs.returncode == 0
    assert ours.stdout == theirs.stdout
    extra = gzip_chunks.extra_field((tmp_path / "fgzip" / "big.gz").read_bytes())
    assert gzip_chunks.parse_layout((tmp_path / "fgzip" / "big.gz").read_bytes()).chunk_size == 64 << 10
    assert theirs.stderr == b"gzip: big.gz: extra field of %d bytes ignored\n" % len(extra)
    assert ours.stderr == b""


def with_extra(data: bytes, extra: bytes) -> bytes:
    """A gzip member whose header carries `extra` as its extra field (FEXTRA)."""
    plain = gz_bytes(data, None, FIXED_TIME)
    return plain[:3] + bytes([plain[3] | 4]) + plain[4:10] + len(extra).to_bytes(2, "little") + extra + plain[10:]


@pytest.mark.parametrize("args", [["-tv", "x.gz"], ["-dcv", "x.gz"], ["-lv", "x.gz"], ["-dv", "x.gz"], ["-t", "x.gz"],
                                  ["-tv", "xx.gz"], ["-lv", "xx.gz"], ["-tv", "px.gz"], ["-lv", "x.gz", "a.gz"]])
def test_verbose_notes_an_extra_field_it_ignores_as_gzip_does(tmp_path, args):
    """gzip -v says `extra field of N bytes ignored` for each member with one: the first
    before the file's name, a later one after it (fgzip's own subfield it reads silently)."""
    def setup(where):
        files(where)
        member = with_extra(A, b"AB\x02\x00xy")
        put(where, "x.gz", member)
        put(where, "xx.gz", member + with_extra(B, b"CD\x00\x00"))
        put(where, "px.gz", gz_bytes(B, b"b", FIXED_TIME) + member)
    assert_same(tmp_path, args, setup, stdout="same")
