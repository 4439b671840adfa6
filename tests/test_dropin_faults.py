"""Damaged input, signals and full disks: gzip's messages and statuses, no partial output,
never a traceback.  A hypothesis fuzz test throws damaged members at fgzip -dc and -t."""

from __future__ import annotations

import gzip as pygzip
import signal
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import fgzip, text_like, tool
from helpers.dropin import GZIP_ENV, assert_same, gz_bytes, put, state

GOOD = gz_bytes(text_like(60_000, seed=7))


def damaged(where):
    put(where, "ok.gz", GOOD)
    put(where, "cut.gz", GOOD[: len(GOOD) // 2])
    put(where, "crc.gz", GOOD[:-8] + bytes([GOOD[-8] ^ 1]) + GOOD[-7:])
    put(where, "len.gz", GOOD[:-1] + bytes([GOOD[-1] ^ 1]))
    put(where, "bad.gz", GOOD[:10] + b"\xff" * 40)
    put(where, "method.gz", b"\x1f\x8b\x09" + GOOD[3:])
    put(where, "garbage.gz", GOOD + b"junk")
    put(where, "stray.gz", GOOD + b"x")
    put(where, "empty.gz", b"")
    put(where, "one.gz", b"x")  # a single byte: the end comes inside the magic
    put(where, "short.gz", b"\x1f\x8bxyz")  # the method is checked before the header is whole
    put(where, "enc.gz", GOOD[:3] + b"\x20" + GOOD[4:])
    put(where, "flags.gz", GOOD[:3] + b"\x48" + GOOD[4:])  # a reserved bit, with FNAME
    put(where, "hcrc.gz", GOOD[:3] + b"\x02" + GOOD[4:10] + b"\0\0" + GOOD[10:])
    # a fault in a later member's header: gzip keeps what it wrote and removes the input
    put(where, "late.gz", GOOD + GOOD[:3] + b"\x20" + GOOD[4:])
    put(where, "latemethod.gz", GOOD + b"\x1f\x8b\x07" + GOOD[3:])


@pytest.mark.parametrize("name", ["cut", "crc", "len", "bad", "method", "garbage", "stray", "empty", "one", "short",
                                  "enc", "flags", "hcrc", "late", "latemethod"])
@pytest.mark.parametrize("mode", ["-d", "-t", "-dc", "-tv"])
def test_damaged_input_as_gzip(tmp_path, name, mode):
    assert_same(tmp_path, [mode, f"{name}.gz", "ok.gz"], damaged, stdout="same" if mode != "-dc" else None)


@pytest.mark.parametrize("name", ["bad", "method", "empty", "one", "short", "enc", "flags", "hcrc", "ok"])
@pytest.mark.parametrize("mode", [["-d"], ["-dv"], ["-dN"]])
def test_the_header_is_read_before_the_output_is_looked_at(tmp_path, name, mode):
    """gzip reads a file's header first: damage there is its error (status 1), not the
    existing output's "already exists; not overwritten" (status 2)."""
    def setup(where):
        damaged(where)
        put(where, name, b"already here\n")

    assert_same(tmp_path, [*mode, f"{name}.gz"], setup)


def test_header_faults_in_a_listing(tmp_path):
    assert_same(tmp_path, ["-l", "enc.gz", "late.gz", "hcrc.gz", "ok.gz"], damaged)


PLAIN = b"plain text, not gzip\n"


@pytest.mark.parametrize("name", ["method", "enc", "flags", "hcrc", "plain", "cut", "late"])
@pytest.mark.parametrize("mode", ["-dc", "-t", "-l"])
def test_a_first_header_refused_on_stdin_ends_the_run(tmp_path, name, mode):
    """gzip exits at once when stdin's first header is refused (later operands are not read),
    where a refused file only skips that file; damage after the header is not such a case."""
    src = tmp_path / "src"
    src.mkdir()
    damaged(src)
    data = PLAIN if name == "plain" else (src / f"{name}.gz").read_bytes()
    assert_same(tmp_path, [mode, "-", "ok.gz"], damaged, input=data, stdout="same" if mode != "-dc" else None)


@pytest.mark.parametrize("data", [b"", b"x", PLAIN, GOOD + PLAIN])
@pytest.mark.parametrize("mode", [["-df"], ["-dfv"], ["-tf"], ["-lf"], ["-d"]])
def test_forced_decompression_of_stdin_copies_what_is_not_gzip(tmp_path, data, mode):
    """stdin's output is stdout, so gzip -df < FILE copies data that is not gzip as -cdf does;
    under -lf an input too short for the magic is "not in gzip format", not cut off."""
    assert_same(tmp_path, mode, damaged, input=data)


@pytest.mark.parametrize("mode", ["-l", "-lf", "-lv"])
def test_listing_follows_a_symbolic_link_as_gzip_does(tmp_path, mode):
    def setup(where):
        damaged(where)
        (where / "link.gz").symlink_to("ok.gz")
        (where / "short").symlink_to("one.gz")

    assert_same(tmp_path, [mode, "link.gz", "short"], setup)


def test_sigpipe_is_silent():
    blob = gz_bytes(bytes(30_000_000))
    proc = subprocess.run(f"{' '.join(tool('fgzip'))} -dc | head -c 10", shell=True, input=blob,
                          capture_output=True, timeout=60, executable="/bin/bash")
    assert proc.stdout == bytes(10) and proc.stderr == b""


@pytest.mark.parametrize("mode", [["-dc"], ["-c"]])
def test_full_disk_on_stdout(mode):
    data = GOOD if mode == ["-dc"] else text_like(2_000_000)
    with open("/dev/full", "wb") as full:
        ours = subprocess.run([*tool("fgzip"), *mode], input=data, stdout=full, stderr=subprocess.PIPE, timeout=60)
    with open("/dev/full", "wb") as full:
        theirs = subprocess.run(["gzip", *mode], input=data, stdout=full, stderr=subprocess.PIPE, timeout=60)
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr.replace(b"fgzip", b"gzip") == theirs.stderr


def test_a_listing_on_a_full_disk_says_so_with_status_1(tmp_path):
    """The listing is printed through Python's buffered stdout: its failed flush at the end
    still gives status 1 and one line (gzip names the listed file's output name there)."""
    put(tmp_path, "ok.gz", GOOD)
    with open("/dev/full", "wb") as full:
        ours = subprocess.run([*tool("fgzip"), "-l", "ok.gz"], cwd=tmp_path, stdout=full, stderr=subprocess.PIPE,
                              timeout=60)
    assert ours.returncode == 1
    assert ours.stderr == b"fgzip: stdout: No space left on device\n"


CLOSED_STREAM_CASES = [
    (">&-", ["-k", "f"]),  # stdout closed, not used: compressing a file works
    (">&-", ["-c", "f"]),  # used: "stdout: Bad file descriptor", status 1
    (">&-", ["-dc", "f.gz"]),
    (">&-", ["-t", "f.gz"]),
    ("<&-", ["-d"]),  # stdin closed and read: "standard input: Bad file descriptor"
    ("<&-", ["-k", "f"]),  # closed, not read
    ("2>&-", ["-k", "f"]),  # stderr closed: the status is gzip's
    ("2>&-", ["-t", "missing"]),
]


@pytest.mark.parametrize("redirect, args", CLOSED_STREAM_CASES)
def test_a_closed_standard_stream_is_met_only_where_it_is_used_as_gzip_does(tmp_path, redirect, args):
    """A caller (a daemon, cron) may start the tool with stdin, stdout or stderr closed:
    gzip's status and message, no output file taking descriptor 1, never a traceback."""
    outcomes = []
    for name, argv in (("gzip", ["gzip"]), ("fgzip", tool("fgzip"))):
        where = tmp_path / name
        where.mkdir()
        put(where, "f", text_like(50_000, seed=3))
        put(where, "f.gz", GOOD)
        result = subprocess.run(["sh", "-c", f'exec "$@" {redirect}', "sh", *argv, *args], cwd=where,
                                capture_output=True, timeout=60, env=GZIP_ENV)
        outcomes.append((result, state(where)))
    (theirs, their_files), (ours, our_files) = outcomes
    assert b"Traceback" not in ours.stderr and b"Exception" not in ours.stderr
    assert ours.returncode == theirs.returncode
    assert ours.stderr.replace(b"fgzip", b"gzip") == theirs.stderr
    assert our_files == their_files


def _file_size_limit():
    """In the child: files may not grow past 100 kB, and writing past that fails (EFBIG)
    instead of raising SIGXFSZ: a full disk, for gzip and fgzip alike."""
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


@pytest.mark.parametrize("args", [["big", "small"], ["-d", "big.gz", "small.gz"]])
def test_an_output_that_cannot_be_written_ends_the_run_as_gzip_ends_it(tmp_path, args):
    """gzip's write error ends the run: later files are left alone, the partial output is
    removed, the input kept."""
    import random

    outcomes = []
    for name, argv in (("gzip", ["gzip"]), ("fgzip", tool("fgzip"))):
        where = tmp_path / name
        where.mkdir()
        noise = random.Random(4).randbytes(150_000)
        if "-d" in args:
            put(where, "big.gz", gz_bytes(noise))
            put(where, "small.gz", gz_bytes(b"small\n"))
        else:
            put(where, "big", noise)
            put(where, "small", b"small\n")
        result = subprocess.run([*argv, *args], cwd=where, capture_output=True, timeout=60, env=GZIP_ENV,
                                preexec_fn=_file_size_limit)
        outcomes.append((result, state(where)))
    (theirs, their_files), (ours, our_files) = outcomes
    assert theirs.returncode == ours.returncode == 1
    assert ours.stderr.replace(b"fgzip", b"gzip") == theirs.stderr
    assert our_files == their_files


@pytest.mark.parametrize("args", [["-l", "f.gz"], ["-h"], ["-V"], ["-L"]])
def test_text_for_a_closed_stdout_is_one_line_and_status_1(tmp_path, args):
    """What fgzip prints through Python's buffered stdout fails only at the end (gzip says
    "gzip: Bad file descriptor", or names the listed file): one line, status 1."""
    put(tmp_path, "f.gz", GOOD)
    result = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *tool("fgzip"), *args], cwd=tmp_path,
                            capture_output=True, timeout=60)
    assert (result.returncode, result.stderr) == (1, b"fgzip: stdout: Bad file descriptor\n")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGXCPU])
def test_signal_removes_partial_output(tmp_path, signum):
    """Signalled while its temporary output exists, fgzip removes it and dies of the signal."""
    import random
    import time

    put(tmp_path, "big", random.Random(3).randbytes(40_000_000))
    # the signal as a foreground run gets it: a suite started in the background (or under
    # nohup) passes SIGINT (SIGHUP) on ignored, and fgzip, as gzip, leaves ignored signals be
    proc = subprocess.Popen([*tool("fgzip"), "-p", "1", "big"], cwd=tmp_path, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL))
    for _ in range(3000):
        if any(p.name.startswith(".big.gz.fgzip") for p in tmp_path.iterdir()) or proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.send_signal(signum)
    proc.wait(timeout=60)
    if proc.returncode == 0:
        pytest.skip("finished before the signal")
    assert proc.returncode == -signum
    assert b"Traceback" not in proc.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big"]


SEED = gz_bytes(b"hello hello hello world\n" * 50) + gz_bytes(b"second member\n")


@st.composite
def corrupt(draw):
    data = bytearray(SEED)
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    data = data[: draw(st.integers(0, len(data)))]
    return bytes(data) + draw(st.binary(max_size=12))


def reference(blob: bytes):
    """(output, ok) as zlib reads it: the concatenated members, or None when damaged."""
    import zlib

    out, rest = b"", blob
    try:
        while rest:
            inflater = zlib.decompressobj(31)
            out += inflater.decompress(rest)
            if not inflater.eof:
                return None
            rest = inflater.unused_data
            if rest[:2] != b"\x1f\x8b":
                return out  # trailing data: gzip warns or fails, never a wrong output
    except zlib.error:
        return None
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(corrupt())
def test_fuzz_never_traceback_hang_or_wrong_output(blob):
    result = fgzip("-dc", input=blob, timeout=30)
    assert b"Traceback" not in result.stderr and b"internal error" not in result.stderr
    assert result.returncode in (0, 1, 2)
    if result.returncode == 0:
        assert result.stdout == reference(blob)
    tested = fgzip("-t", input=blob, timeout=30)
    assert tested.returncode == result.returncode


def test_a_member_whose_trailer_ends_in_zero_bytes_is_not_trailing_zeros():
    """Its size field (14) ends in three zero bytes: they belong to the member."""
    blob = pygzip.compress(b"hello, world\n", mtime=0) + pygzip.compress(b"second member\n", mtime=0)
    assert blob.endswith(b"\x0e\x00\x00\x00")
    result = fgzip("-dc", input=blob)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"hello, world\nsecond member\n", b"")


CHUNKED = fgzip("-b", "64", "-n", input=text_like(400_000, seed=31), check=True).stdout


def chunked_damage(case: int) -> bytes:
    """A bit flipped anywhere in fgzip's own multi-chunk output, or the output cut short."""
    import random

    rng = random.Random(case)
    data = bytearray(CHUNKED)
    if case % 6 == 5:
        return bytes(data[: rng.randrange(1, len(data))])
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


@pytest.mark.parametrize("case", range(24))
def test_damaged_chunked_output_reports_as_gzip_does_serially_and_in_parallel(tmp_path, case):
    """Damage to a member that fgzip -d decodes in parallel gets gzip's messages and status,
    the same as fgzip -p 1 gives."""
    blob = chunked_damage(case)
    (tmp_path / "x.gz").write_bytes(blob)
    theirs = subprocess.run(["gzip", "-t", "x.gz"], cwd=tmp_path, capture_output=True)
    for threads in ("1", "2"):
        ours = subprocess.run([*tool("fgzip"), "-t", "-p", threads, "x.gz"], cwd=tmp_path, capture_output=True)
        assert (ours.returncode, ours.stderr.replace(b"fgzip", b"gzip")) == (theirs.returncode, theirs.stderr)


@pytest.mark.parametrize("args", [["-c", "/proc/version"], ["-cv", "/proc/version"], ["-cq", "/proc/version"]])
def test_a_file_that_holds_more_than_its_size_is_noted_as_gzip_notes_it(tmp_path, args):
    """A /proc file says size 0 and holds text (so does a log that grows while it is read):
    gzip compresses what it reads and says "file size changed while zipping", status 0."""
    ours, _ = assert_same(tmp_path, args, lambda where: None, stdout="gunzip", ratios=False)
    assert b"file size changed while zipping" in ours.stderr


def test_stdin_from_such_a_file_is_noted_too():
    outcomes = []
    for argv in (["gzip", "-c"], [*tool("fgzip"), "-c"]):
        with open("/proc/version", "rb") as stdin:
            outcomes.append(subprocess.run(argv, stdin=stdin, capture_output=True, env=GZIP_ENV, timeout=60))
    (theirs, ours) = outcomes
    assert (ours.returncode, ours.stderr) == (theirs.returncode, theirs.stderr.replace(b"gzip", b"fgzip"))
    assert ours.stderr == b"fgzip: stdin: file size changed while zipping\n"
    assert pygzip.decompress(ours.stdout) == pygzip.decompress(theirs.stdout)
