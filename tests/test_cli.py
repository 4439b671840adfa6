"""What a user sees at the command line: options, messages, exit codes, files kept or removed.

Each behaviour is compared with GNU gzip run the same way (the program name aside).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import assert_no_traceback, fgzip, run, text_like, tool
from helpers.dropin import run_in_copies


def same_shape(ours: bytes, theirs: bytes) -> bool:
    return ours.replace(b"fgzip", b"gzip") == theirs


def both(gzip_bin, tmp_path, args, setup, input=None):
    """Run gzip and fgzip with `args` in two fresh copies of a directory made by `setup`."""
    return run_in_copies(tmp_path, args, setup, input=input, reference=gzip_bin)


def listing(where):
    return sorted((p.name, p.lstat().st_mode & 0o7777) for p in where.iterdir())


def make_a(where):
    (where / "a").write_bytes(b"some text\n" * 100)


@pytest.mark.parametrize("args", [
    ["nosuch"],
    ["-j", "a"],
    ["--bogus", "a"],
    ["-S"],
    ["--suffix"],
    ["--ve", "a"],
    ["a", "a.gz"],
    ["-k", "a", "nosuch"],
    ["-d", "a"],
    ["-d", "nosuch.gz"],
    ["--fast", "--keep", "a"],
    ["-kSz", "a"],
    ["--suffix=.x", "-k", "a"],
    ["--fas", "-k", "a"],
    ["-Z", "a"],
    ["--fast=3", "a"],
    ["-a", "-k", "a"],
    # abbreviations: gzip's own long options come first, pigz's and octoray's after
    ["--no-", "-k", "a"], ["--h"], ["--a", "-k", "a"], ["--r", "a"], ["--t", "a"], ["--b", "a"], ["--s", "a"],
    # -h acts where it stands; values are checked once every option is read
    ["-h", "-j"], ["-h", "--bogus"], ["-h", "-Z"], ["-S", "", "-h"], ["-a", "-h"],
    ["-S", "", "-S", ".x", "-k", "a"], ["-S", ".x", "-S", "", "-k", "a"], ["-a", "-S", ""], ["-S", "a/b", "-k", "a"],
    # digits: the last wins, and a 0 among them is invalid (pigz refuses these too); -0 alone is pigz's
    ["-19", "-k", "a"], ["-10", "-k", "a"], ["-90", "a"], ["-100", "a"], ["-09", "a"], ["-011", "a"], ["-k9", "-01", "a"],
])
def test_status_message_and_files_match_gzip(gzip_bin, tmp_path, args):
    def setup(where):
        make_a(where)
        if args == ["a", "a.gz"]:
            (where / "a.gz").write_bytes(b"not really gzip")
    (theirs, their_dir), (ours, our_dir) = both(gzip_bin, tmp_path, args, setup)
    assert_no_traceback(ours)
    assert ours.returncode == theirs.returncode, (ours.stderr, theirs.stderr)
    assert same_shape(ours.stderr, theirs.stderr), (ours.stderr, theirs.stderr)
    assert listing(our_dir) == listing(their_dir)


def test_directory_is_ignored_with_warning(gzip_bin, tmp_path):
    (theirs, _), (ours, _) = both(gzip_bin, tmp_path, ["d"], lambda w: (w / "d").mkdir())
    assert (ours.returncode, ours.stderr.replace(b"fgzip", b"gzip")) == (theirs.returncode, theirs.stderr) == (
        2, b"gzip: d is a directory -- ignored\n")


def test_existing_output_is_not_overwritten_without_force(tmp_path):
    make_a(tmp_path)
    (tmp_path / "a.gz").write_bytes(b"precious")
    result = fgzip("a", cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert result.stderr == b"fgzip: a.gz already exists;\tnot overwritten\n"
    assert (tmp_path / "a.gz").read_bytes() == b"precious" and (tmp_path / "a").exists()
    assert fgzip("-f", "a", cwd=tmp_path, check=True).returncode == 0
    assert not (tmp_path / "a").exists() and (tmp_path / "a.gz").read_bytes()[:2] == b"\x1f\x8b"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file_is_an_error_and_stays(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * 100)
    secret.chmod(0)
    result = fgzip(secret)
    assert result.returncode == 1
    assert result.stderr == f"fgzip: {secret}: Permission denied\n".encode()
    assert secret.exists() and not (tmp_path / "secret.gz").exists()


def test_dangling_symlink_with_force_is_an_error(gzip_bin, tmp_path):
    def setup(where):
        os.symlink("missing-target", where / "l")
    (theirs, their_dir), (ours, our_dir) = both(gzip_bin, tmp_path, ["-f", "l"], setup)
    assert ours.returncode == theirs.returncode == 1
    assert same_shape(ours.stderr, theirs.stderr), (ours.stderr, theirs.stderr)
    assert listing(our_dir) == listing(their_dir)


def test_already_compressed_suffix_is_left_alone(gzip_bin, tmp_path):
    (theirs, _), (ours, _) = both(gzip_bin, tmp_path, ["x.GZ"], lambda w: (w / "x.GZ").write_bytes(b"abc"))
    assert ours.returncode == theirs.returncode == 0
    assert same_shape(ours.stderr, theirs.stderr)


def test_bundled_options_and_level(tmp_path, gzip_bin):
    (tmp_path / "f").write_bytes(text_like(200_000))
    result = fgzip("-9kc", "f", cwd=tmp_path, check=True)
    assert result.stdout[8] == 2  # XFL: maximum compression
    assert (tmp_path / "f").exists() and not (tmp_path / "f.gz").exists()
    assert run([gzip_bin, "-dc"], input=result.stdout, check=True).stdout == (tmp_path / "f").read_bytes()


def test_a_run_of_digits_is_the_last_but_0_and_11_are_pigzs_levels(tmp_path):
    (tmp_path / "f").write_bytes(text_like(200_000))
    sizes = {level: len(fgzip("-c", level, "f", cwd=tmp_path, check=True).stdout) for level in ("-0", "-1", "-19", "-9")}
    assert sizes["-0"] > 200_000 > sizes["-1"] > sizes["-9"] == sizes["-19"]


def test_options_after_file_names(tmp_path):
    make_a(tmp_path)
    fgzip("a", "-k", cwd=tmp_path, check=True)
    assert (tmp_path / "a").exists() and (tmp_path / "a.gz").exists()


def test_verbose_reports_like_gzip(gzip_bin, tmp_path):
    (theirs, _), (ours, _) = both(gzip_bin, tmp_path, ["-v", "a"], make_a)
    assert ours.returncode == theirs.returncode == 0
    assert ours.stderr.startswith(b"a:\t") and ours.stderr.endswith(b"% -- replaced with a.gz\n")


def test_help_and_version_go_to_stdout():
    helped = fgzip("--help", check=True)
    assert helped.stdout.startswith(b"Usage: fgzip") and helped.stderr == b""
    version = fgzip("-V", check=True)
    assert version.stdout.startswith(b"fgzip ")


def test_octoray_help_sums_up_each_command_on_one_line():
    helped = run([*tool("octoray"), "--help"], env=dict(os.environ, COLUMNS="100"), check=True).stdout.decode()
    lines = [line for line in helped.splitlines() if "status" in line]
    assert len(lines) == 1 and "One line per worker: its accelerator, threads and tasks done." in lines[0]
    assert "nothing could run there" not in helped  # the rest is `octoray status --help`'s


def test_refuses_to_write_compressed_data_to_a_terminal():
    import pty

    controller, terminal = pty.openpty()
    try:
        result = subprocess.run([*tool("fgzip")], stdin=subprocess.DEVNULL,
                                stdout=terminal, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert result.returncode == 1
    assert result.stderr.startswith(b"fgzip: compressed data not written to a terminal.")


def test_write_error_is_reported_not_raised():
    with open("/dev/full", "wb") as full:
        result = subprocess.run([*tool("fgzip")], input=text_like(3_000_000),
                                stdout=full, stderr=subprocess.PIPE, timeout=60)
    assert result.returncode == 1
    assert result.stderr == b"\nfgzip: stdout: No space left on device\n"


@pytest.mark.parametrize("bad, reason", [
    (b"plain text, not gzip", b"not in gzip format"),
    (b"", b"unexpected end of file"),
])
def test_bad_stdin_for_decompression(gzip_bin, bad, reason):
    ours = fgzip("-d", input=bad)
    theirs = run([gzip_bin, "-d"], input=bad)
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr == b"\nfgzip: stdin: " + reason + b"\n"
    assert same_shape(ours.stderr, theirs.stderr)


def test_corrupt_file_keeps_input_and_leaves_no_output(tmp_path, gzip_bin):
    data = text_like(500_000)
    blob = bytearray(run([gzip_bin], input=data, check=True).stdout)
    blob[-6] ^= 0xFF  # damage the stored CRC/length
    (tmp_path / "c.gz").write_bytes(bytes(blob))
    ours = fgzip("-d", "c.gz", cwd=tmp_path)
    assert ours.returncode == 1 and b"invalid compressed data" in ours.stderr
    assert_no_traceback(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.gz"]


def test_truncated_file_is_unexpected_end_of_file(tmp_path, gzip_bin):
    blob = run([gzip_bin], input=text_like(300_000), check=True).stdout
    (tmp_path / "t.gz").write_bytes(blob[: len(blob) // 2])
    ours = fgzip("-d", "t.gz", cwd=tmp_path)
    theirs = run([gzip_bin, "-dc", "t.gz"], cwd=tmp_path)
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr == b"\nfgzip: t.gz: unexpected end of file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.gz"]


def test_trailing_garbage_is_a_warning(gzip_bin):
    blob = run([gzip_bin], input=b"payload\n", check=True).stdout + b"garbage!"
    ours = fgzip("-dc", input=blob)
    theirs = run([gzip_bin, "-dc"], input=blob)
    assert ours.stdout == theirs.stdout == b"payload\n"
    assert ours.returncode == theirs.returncode == 2
    assert same_shape(ours.stderr, theirs.stderr)


def test_test_option_checks_without_output(tmp_path):
    (tmp_path / "a").write_bytes(b"abc" * 1000)
    fgzip("a", cwd=tmp_path, check=True)
    result = fgzip("-tv", "a.gz", cwd=tmp_path, check=True)
    assert result.stdout == b"" and result.stderr == b"a.gz:\t OK\n"


def test_interrupted_compression_removes_partial_output(tmp_path):
    """SIGTERM mid-file: no half-written .gz stays, the input is intact."""
    import signal
    import time

    fifo = tmp_path / "slow"
    os.mkfifo(fifo)
    big = tmp_path / "big"
    proc = subprocess.Popen([*tool("fgzip"), "-c", "-f", str(fifo)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # a regular file cannot be slowed down, so feed a FIFO, then stop mid-stream
    with open(fifo, "wb") as writer:
        writer.write(b"x" * 1_000_000)
        writer.flush()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        try:
            writer.write(b"y" * 1_000_000)
        except BrokenPipeError:
            pass
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    assert b"Traceback" not in proc.stderr.read()
    assert not big.exists()


def _on_terminal(argv, which, cwd):
    """Run with stdin or stdout on a fresh terminal (stdin gets end-of-file keys)."""
    import pty

    controller, terminal = pty.openpty()
    streams = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE}
    streams[which] = terminal
    if which == "stdin":
        os.write(controller, b"\x04" * 20)
    try:
        result = subprocess.run(argv, cwd=cwd, stderr=subprocess.PIPE, timeout=60, **streams)
    finally:
        os.close(terminal)
        os.close(controller)
    return result.returncode, result.stderr.replace(b"fgzip", b"gzip")


@pytest.mark.parametrize("which, args", [
    ("stdout", []), ("stdout", ["-"]), ("stdout", ["-c", "a"]), ("stdout", ["-d"]),
    ("stdin", ["-d"]), ("stdin", ["-t"]), ("stdin", ["-dc", "-"]), ("stdin", []),
    ("stdin", ["-l"]),  # gzip -l reads a terminal: no refusal, "unexpected end of file"
])
def test_terminal_checks_as_gzip(gzip_bin, tmp_path, which, args):
    make_a(tmp_path)
    assert _on_terminal([*tool("fgzip"), *args], which, tmp_path) == _on_terminal([gzip_bin, *args], which, tmp_path)
