"""Files a user compresses and decompresses: names, suffixes, refusals, recursion, -N, GZIP.
Each case runs GNU gzip and fgzip in two identical directories and compares the outcome."""

from __future__ import annotations

import os
import re

import pytest

from conftest import fgzip, run, text_like
from helpers.dropin import FIXED_TIME, assert_same, gz_bytes, put

DATA = text_like(20_000, seed=5)


def plain(where):
    put(where, "a", DATA)
    put(where, "b", DATA[:999], mode=0o600)


def specials(where):
    plain(where)
    os.link(where / "a", where / "hard")
    put(where, "suid", DATA, mode=0o4755)
    put(where, "sgid", DATA, mode=0o2755)
    put(where, "sticky", DATA, mode=0o1644)
    os.symlink("a", where / "link")
    os.mkfifo(where / "fifo")
    (where / "dir").mkdir()


@pytest.mark.parametrize("args", [
    ["a", "b"], ["-k", "a"], ["-v", "a"], ["-q", "hard"], ["hard"], ["-f", "hard"],
    ["suid"], ["-f", "suid"], ["sgid"], ["sticky"], ["-f", "sticky"], ["link"], ["-f", "link"],
    ["fifo"], ["dir"], ["-q", "dir"], ["nosuch", "a"], ["", "a"], ["-d", ""],
])
def test_file_types_as_gzip(tmp_path, args):
    assert_same(tmp_path, args, specials, ratios=False)


def test_compress_link_to_stdout(tmp_path):
    assert_same(tmp_path, ["-c", "link"], specials, stdout="gunzip")


def tree(where):
    for folder in ("", "sub/", "sub/deeper/", "with space/", "ünï/"):
        put(where, f"t/{folder}plain file", DATA[:3000])
        put(where, f"t/{folder}é", DATA[:100])
    put(where, "t/done.gz", gz_bytes(b"x\n"))
    put(where, "t/sub/upper.GZ", gz_bytes(b"y\n"))
    os.symlink("plain file", where / "t/sub/link")


@pytest.mark.parametrize("args", [["-r", "t"], ["-rv", "t"], ["-rk", "t/"], ["-rq", "t"]])
def test_recursive_compression(tmp_path, args):
    assert_same(tmp_path, args, tree, ratios=False)


@pytest.mark.parametrize("args", [["-dr", "t"], ["-drv", "t"], ["-tr", "t"], ["-tvr", "t"]])
def test_recursive_decompression(tmp_path, args):
    def setup(where):
        tree(where)
        run(["gzip", "-r", str(where / "t" / "sub")])
    assert_same(tmp_path, args, setup, ratios=False)


def test_recursive_to_stdout(tmp_path):
    assert_same(tmp_path, ["-rc", "t"], tree, stdout="gunzip")


def compressed(where):
    put(where, "a.gz", gz_bytes(DATA, b"original", FIXED_TIME - 1000))
    put(where, "b.tgz", gz_bytes(DATA))
    put(where, "C.Z", gz_bytes(DATA))
    put(where, "d.x", gz_bytes(DATA))
    put(where, "evil.gz", gz_bytes(DATA, b"../../evil", FIXED_TIME - 5))
    put(where, "plain", DATA)
    put(where, "a", b"in the way")
    put(where, "dot.gz", gz_bytes(DATA, b"..", FIXED_TIME - 7))  # -N: gzip takes ".." as it is


@pytest.mark.parametrize("args", [
    ["-d", "b.tgz", "C.Z"], ["-d", "a.gz"], ["-df", "a.gz"], ["-dN", "a.gz"], ["-dN", "evil.gz"],
    ["-d", "plain"], ["-dq", "plain"], ["-d", "-S", ".x", "d.x"], ["-d", "b"], ["-dv", "b.tgz"],
    ["-dk", "nosuch"], ["a.gz"], ["-f", "a.gz"], ["-q", "a.gz"],
    # gzip's -r silences suffix complaints for named files too; -dc never looks at suffixes
    ["-dr", "plain"], ["-tr", "plain"], ["-lr", "plain"], ["-r", "b.tgz"], ["-rv", "b.tgz"], ["-dcr", "."],
    ["-d", "a.gz/"],  # Not a directory, under the name given (no suffix search)
    ["-dN", "dot.gz"], ["-dNf", "dot.gz"],
    # -S first, unless it ends one of gzip's own as written ("z" does, "Z" does not): gzip's order
    ["-d", "-S", "gz", "evil.gz"], ["-d", "-S", "z", "C.Z"], ["-d", "-S", "gz", "b.tgz"], ["-d", "-S", "l.gz", "evil.gz"],
    ["-S", "l.gz", "evil.gz"], ["-d", "-S", "Z", "evil.gz"], ["-d", "-S", "GZ", "b.tgz"], ["-S", "Z", "a.gz"],
])
def test_decompress_names_as_gzip(tmp_path, args):
    assert_same(tmp_path, args, compressed)


@pytest.mark.parametrize("stdin_data", [b"plain text", b"", b"\x1f", gz_bytes(b"xxx\n") + b"yyy\n",
                                        gz_bytes(b"xxx\n") + b"\0\0", gz_bytes(b"xxx\n") + b"y"])
def test_cdf_copies_non_gzip_data(tmp_path, stdin_data):
    assert_same(tmp_path, ["-cdf"], lambda where: None, input=stdin_data)


@pytest.mark.parametrize("args", [["-k", ".gz"], ["-d", ".gz"], ["-k", "-S", "gz", "gz"]])
def test_a_name_that_is_only_a_suffix(tmp_path, args):
    assert_same(tmp_path, args, lambda where: (put(where, ".gz", gz_bytes(DATA)), put(where, "gz", DATA)), ratios=False)


def passed_through(where):
    put(where, "p", b"plain text\n")
    put(where, "m", gz_bytes(b"xxx\n" * 50) + b"yyy\n")
    put(where, "e", b"")
    put(where, "a.gz", gz_bytes(DATA))


@pytest.mark.parametrize("args", [["-dcfv", "p", "m", "e", "a.gz"], ["-tfv", "p", "m", "e", "a.gz"]])
def test_verbose_pass_through_names_each_file(tmp_path, args):
    assert_same(tmp_path, args, passed_through)


@pytest.mark.parametrize("args", [["-dcv"], ["-dv"], ["-tv"], ["-dcfv"]])
def test_verbose_decompression_of_stdin_says_what_gzip_says(tmp_path, args):
    assert_same(tmp_path, args, lambda where: None, input=gz_bytes(DATA) + b"more")


@pytest.mark.parametrize("name", ["y" * 250, "y" * 254, "y" * 130 + "." + "z" * 124, ".".join(["ab"] * 85),
                                  "é" * 127])
@pytest.mark.parametrize("options", [[], ["-q"], ["-v"]])
def test_names_near_the_length_limit(tmp_path, name, options):
    """NAME.gz over 255 bytes: gzip shortens the name (and says so); the temporary output
    beside a long name must fit too."""
    assert_same(tmp_path, [*options, name], lambda where: put(where, name, DATA), ratios=False)


def test_long_stored_name_is_truncated(tmp_path):
    assert_same(tmp_path, ["-dN", "long.gz"], lambda where: put(where, "long.gz", gz_bytes(DATA, b"x" * 300)))


@pytest.mark.parametrize("times", [(FIXED_TIME - 9, FIXED_TIME - 3), (0, FIXED_TIME - 3), (FIXED_TIME - 9, 0),
                                   (0, 0)])
def test_n_takes_the_last_members_time_that_is_not_0(tmp_path, times):
    """gzip reads every member's header into one time stamp: -dN gives the output the last
    MTIME that is not 0, else the input file's time."""
    def files(where):
        put(where, "c.gz", gz_bytes(b"one\n", b"x", times[0]) + gz_bytes(b"two\n", b"x", times[1]))

    assert_same(tmp_path, ["-dN", "c.gz"], files)


NOT_UTF8 = os.fsdecode(b"\xe9t\xe9")  # Latin-1 "ete": bytes that are not UTF-8


@pytest.mark.parametrize("args", [["-v", NOT_UTF8], ["-k", NOT_UTF8, "nope" + NOT_UTF8], ["-k", NOT_UTF8],
                                  ["-dv", NOT_UTF8 + ".gz"], ["-l", NOT_UTF8 + ".gz"]])
def test_names_that_are_not_utf8_are_written_as_their_bytes(tmp_path, args):
    def files(where):
        put(where, NOT_UTF8, DATA)
        put(where, NOT_UTF8 + ".gz", gz_bytes(DATA))

    assert_same(tmp_path, args, files, ratios=False)


def test_existing_output_without_terminal(tmp_path):
    def setup(where):
        plain(where)
        put(where, "a.gz", b"precious")
    assert_same(tmp_path, ["a"], setup)
    assert_same(tmp_path / "q", ["-q", "a"], setup) if (tmp_path / "q").mkdir() is None else None


def test_existing_output_prompt_on_terminal(tmp_path):
    import pty
    import signal
    import subprocess

    from conftest import tool

    for answer, status in ((b"n\n", 2), (b"y\n", 0)):
        put(tmp_path, "a", DATA)
        put(tmp_path, "a.gz", b"precious")
        controller, terminal = pty.openpty()
        os.write(controller, answer)
        # as from an interactive shell: gzip (and fgzip) never ask where SIGINT is ignored, as
        # it is for a job started in the background (`bash .ci/run &`), which the suite may be
        result = subprocess.run([*tool("fgzip"), "a"], stdin=terminal, capture_output=True, cwd=tmp_path, timeout=60,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        os.close(controller)
        os.close(terminal)
        prompt = b"fgzip: a.gz already exists; do you wish to overwrite (y or n)? "
        assert result.returncode == status
        assert result.stderr == prompt + (b"\tnot overwritten\n" if status else b"")
        assert ((tmp_path / "a.gz").read_bytes() == b"precious") == bool(status)


@pytest.mark.parametrize("value", ["-9", "-n -v", "--rsyncable", "-q", "--verb", "-c", "-9c", "--std",
                                   "-S .x", "foo", "-1 --", "-j", "  ", "-0", "-11"])
def test_gzip_environment_variable(tmp_path, value):
    assert_same(tmp_path, ["-k", "a"], plain, env={"GZIP": value}, ratios=False)


def test_name_and_time_stored_like_gzip(tmp_path):
    put(tmp_path, "a", DATA)
    ours = fgzip("-c", "a", cwd=tmp_path, check=True).stdout
    theirs = run(["gzip", "-c", "a"], cwd=tmp_path, check=True).stdout
    assert ours[3:8] == theirs[3:8] and ours[10:12] == theirs[10:12] == b"a\0"
    assert fgzip("-cn", "a", cwd=tmp_path, check=True).stdout[3:8] == b"\0" * 5


@pytest.mark.parametrize("mtime", [0, -1, 2**32, 2**32 - 1])
@pytest.mark.parametrize("args", [["-k"], ["-c"], ["-q", "-k"], ["-kv"], ["-cv"], ["-n", "-k"]])
def test_a_time_gzip_cannot_store_is_a_warning_and_zero(tmp_path, mtime, args):
    """gzip stores 0 and warns (status 2, -q hushes the words only) for a time before
    1970-01-01 00:00:01 or after 2106, unless -n; a time that fits is stored silently."""
    def setup(where):
        put(where, "a", DATA, mtime=mtime)

    to_stdout = args[0].startswith("-c")
    ours, theirs = assert_same(tmp_path, [*args, "a"], setup, stdout="gunzip" if to_stdout else "same",
                               ratios=False)
    if to_stdout:
        assert ours.stdout[4:8] == theirs.stdout[4:8] == (mtime if 0 < mtime < 2**32 else 0).to_bytes(4, "little")


def test_zlib_and_zip_have_no_gzip_time_to_warn_about(tmp_path):
    put(tmp_path, "a", DATA, mtime=-1)
    for form in ("-z", "-K"):
        result = fgzip(form, "-c", "a", cwd=tmp_path)
        assert (result.returncode, result.stderr) == (0, b"")


@pytest.mark.parametrize("args", [[], ["-v"], ["-q"]])
def test_a_time_gzip_cannot_store_on_standard_input(tmp_path, args):
    put(tmp_path, "a", DATA, mtime=-5)
    with open(tmp_path / "a", "rb") as source:
        theirs = run(["gzip", *args], stdin=source, env={"TZ": "UTC", "PATH": "/usr/bin:/bin"})
    with open(tmp_path / "a", "rb") as source:
        ours = fgzip(*args, stdin=source)
    ratio = re.compile(rb"\d+\.\d%")
    assert ours.returncode == theirs.returncode == 2
    assert ratio.sub(b"R", ours.stderr.replace(b"fgzip", b"gzip")) == ratio.sub(b"R", theirs.stderr)
    assert ours.stdout[4:8] == b"\0" * 4


@pytest.mark.parametrize("args", [["-a", "-c"], ["-a", "-q", "-c"], ["-q", "-a", "-c"], ["-a", "-q", "-v", "-c"],
                                  ["-a", "-v", "-q", "-c"], ["--ascii", "-dc"]])
def test_the_ascii_warning_follows_the_last_word_on_quiet(tmp_path, args):
    """gzip warns about -a after reading every option: -q anywhere hushes it, unless a -v
    comes after the -q."""
    def setup(where):
        put(where, "a.txt", b"text\n" * 50)
        put(where, "a.gz", gz_bytes(b"text\n" * 50))

    operand = "a.gz" if "-dc" in args else "a.txt"
    assert_same(tmp_path, [*args, operand], setup, stdout="gunzip" if "-c" in args else "same", ratios=False)
