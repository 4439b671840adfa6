"""Running the tools where octoray is not (fully) installed: the launchers in bin/ under a
Python without the dependencies, a checkout whose C extensions were never built, and the
version each tool prints."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, run, tool

import octoray

NOT_INSTALLED = ("octoray is not installed in this Python ({python}): use the environment it is installed in "
                 "(. .venv/bin/activate), or install it here: python3 -m pip install .  — or pip install -e . "
                 "to run the launchers in bin/")


def bare_python() -> list[str]:
    """This interpreter without site-packages: a Python in which only the standard library
    is installed, as `python3 bin/fgzip` outside the virtual environment."""
    return [sys.executable, "-S"]


@pytest.mark.parametrize("argv, missing", [
    (["fgzip"], "isal"),  # fgzip imports its kernels on first use
    (["fclassify", "x.png"], "typer"),  # fclassify and octoray import typer at start
    (["octoray", "status"], "typer"),
])
def test_a_python_without_octoray_gets_the_install_hint(argv, missing):
    program = argv[0]
    result = run([*bare_python(), str(ROOT / "bin" / program), *argv[1:]], input=b"hello\n")
    assert result.returncode == 1
    assert result.stdout == b""
    expected = f"{program}: cannot import {missing}: {NOT_INSTALLED.format(python=sys.executable)}\n"
    assert result.stderr.decode() == expected


@pytest.fixture
def unbuilt_checkout(tmp_path):
    """A copy of the checkout without its built C extensions, as a clone looks after a
    non-editable `pip install .` (which builds them into site-packages instead)."""
    copy = tmp_path / "clone"
    shutil.copytree(ROOT / "bin", copy / "bin")
    shutil.copytree(ROOT / "octoray", copy / "octoray",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "models"))
    return copy


@pytest.mark.parametrize("argv", [["fclassify", "x.png"], ["fgzip", "-c", "README.md"], ["octoray", "status"]])
def test_launchers_in_an_unbuilt_checkout_say_to_build_it(unbuilt_checkout, argv):
    program = argv[0]
    result = run([sys.executable, str(unbuilt_checkout / "bin" / program), *argv[1:]], cwd=ROOT)
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode() == (
        f"{program}: cannot import octoray.kernels._cnv_native: octoray's C extensions are not built in "
        f"{unbuilt_checkout} (pip install -e . builds them there)\n")


def test_the_launchers_run_a_built_checkout(tmp_path):
    source = tmp_path / "hello"
    source.write_bytes(b"hello\n" * 100)
    result = run([sys.executable, str(ROOT / "bin" / "fgzip"), "-c", str(source)], check=True)
    assert run(["gzip", "-dc"], input=result.stdout, check=True).stdout == source.read_bytes()


def test_octoray_version_matches_fgzip_and_fclassify():
    version = octoray.__version__
    assert run([*tool("octoray"), "--version"], check=True).stdout == f"octoray {version}\n".encode()
    assert run([*tool("octoray"), "-V"], check=True).stdout == f"octoray {version}\n".encode()
    assert run([*tool("fgzip"), "--version"], check=True).stdout.startswith(f"fgzip {version} (octoray)".encode())


@pytest.mark.parametrize("argv, first, hint", [
    (["--bogus"], "octoray: No such option: --bogus", "Try 'octoray -h' for help."),
    (["nope"], "octoray: No such command 'nope'.", "Try 'octoray -h' for help."),
    (["status", "-p", "x"], "octoray: Invalid value for '--threads' / '-p': 'x' is not a valid integer.",
     "Try 'octoray status -h' for help."),
])
def test_octoray_usage_errors_name_the_program(argv, first, hint):
    result = run([*tool("octoray"), *argv])
    assert result.returncode == 2 and result.stdout == b""
    assert result.stderr.decode().splitlines() == [first, hint]


def test_octoray_alone_shows_its_help():
    result = run([*tool("octoray")])
    assert result.returncode == 2 and b"status" in result.stdout + result.stderr


@pytest.mark.parametrize("shell, status, stderr", [
    ("octoray status | true; exit ${PIPESTATUS[0]}", 141, ""),  # the reader gone: as SIGPIPE ends a tool
    ("octoray status > /dev/full", 1, "octoray: stdout: No space left on device\n"),
    ("octoray status >&-", 1, "octoray: stdout: Bad file descriptor\n"),
    ("octoray --version > /dev/full", 1, "octoray: stdout: No space left on device\n"),
])
def test_octoray_output_that_cannot_be_written_is_one_line_or_quiet(shell, status, stderr):
    """Click turned a broken pipe into a silent status 1, and a full disk into a traceback."""
    octoray = " ".join(tool("octoray"))
    result = subprocess.run(shell.replace("octoray", octoray, 1), shell=True, capture_output=True,
                            executable="/bin/bash", timeout=120)
    assert (result.returncode, result.stderr.decode()) == (status, stderr)
