"""What the three tools share when a run fails or ends: the one-line message for a failure
that is not the user's input, which failures are the engine's, and how a run that used Dask
leaves.

A module that cannot be imported almost always means octoray runs in a Python it was not
installed in (`python3 bin/fgzip` outside the virtual environment), or the launchers in
bin/ run a checkout whose C extensions were never built (a non-editable install builds them
elsewhere).  Both get a message that says what to do instead of "internal error".
Standard library only: this module must import wherever the launchers run.
"""

from __future__ import annotations

import errno
import os
import sys

INSTALL_HINT = ("use the environment it is installed in (. .venv/bin/activate), or install it here: "
                "python3 -m pip install .  — or pip install -e . to run the launchers in bin/")
EXTENSIONS = ("octoray/kernels/_cnv_native", "octoray/formats/_deflate_blocks")


def missing_module(error: ImportError) -> str:
    """The module that could not be imported: `isal`, or `octoray.kernels._cnv_native` for
    "cannot import name '_cnv_native' from 'octoray.kernels'"."""
    text = str(error)
    if text.startswith("cannot import name '") and error.name:
        return f"{error.name}.{text.split(chr(39))[1]}"
    return error.name or text


def import_failure(program: str, error: ImportError) -> str:
    module = missing_module(error)
    if module.startswith("octoray.") and module.rsplit(".", 1)[-1].startswith("_"):
        return _unbuilt(program, module, _checkout_of_octoray())
    return (f"{program}: cannot import {module}: octoray is not installed in this Python "
            f"({sys.executable}): {INSTALL_HINT}")


def describe(program: str, failure: BaseException) -> str:
    """The message for an exception that reached a tool's top level unexplained."""
    if isinstance(failure, ImportError):
        return import_failure(program, failure)
    return f"{program}: internal error: {type(failure).__name__}: {failure}"


def unbuilt_extension(checkout: str) -> str | None:
    """The first C extension that a checkout lacks (dotted name), or None when all are built.
    The launchers in bin/ ask before running a checkout instead of an installed octoray."""
    import _imp

    suffixes = _imp.extension_suffixes()
    for stem in EXTENSIONS:
        base = os.path.join(checkout, *stem.split("/"))
        if not any(os.path.exists(base + suffix) for suffix in suffixes):
            return stem.replace("/", ".")
    return None


def check_checkout(program: str, checkout: str) -> None:
    """Exit with the install hint when the checkout the launcher runs is not built."""
    missing = unbuilt_extension(checkout)
    if missing:
        sys.stderr.write(_unbuilt(program, missing, checkout) + "\n")
        sys.exit(1)


def _unbuilt(program: str, module: str, checkout: str) -> str:
    return (f"{program}: cannot import {module}: octoray's C extensions are not built in {checkout} "
            f"(pip install -e . builds them there)")


def _checkout_of_octoray() -> str:
    where = getattr(sys.modules.get("octoray"), "__file__", None)
    return os.path.dirname(os.path.dirname(where)) if where else "this checkout"


def engine_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a cluster or an accelerator raises, without importing Dask or the
    kernels when the run never loaded them."""
    found = []
    engine = sys.modules.get("octoray.engine.faults")
    kernels = sys.modules.get("octoray.kernels")
    if engine is not None:
        found.append(engine.ClusterError)
    if kernels is not None:
        found.append(kernels.AcceleratorError)
    return tuple(found)


def failure_text(program: str, failure: BaseException, unnamed: str | None = "stdout") -> str:
    """One line for a failure that ends the run: the engine's own message, a system error
    with the file it concerns (`unnamed` where it names none: fgzip and fclassify write only
    stdout), a missing install, or (a bug) what broke; never a traceback."""
    if isinstance(failure, engine_errors()):
        return f"{program}: {failure}"
    if isinstance(failure, OSError):
        where = failure.filename if failure.filename is not None else unnamed
        return f"{program}: {where}: {failure.strerror or failure}" if where else f"{program}: {failure}"
    return describe(program, failure)


SIGPIPE_STATUS = 128 + 13  # what a shell shows for a tool SIGPIPE ended (fgzip, cat)


class ReaderGone(Exception):
    """The reader of stdout went away (`... | head`): raised in place of a BrokenPipeError
    that Click would turn into a silent status 1."""


def reported(program: str, failure: BaseException, unnamed: str | None = "stdout") -> str:
    """failure_text, and where the failure was writing stdout (an OSError naming no file),
    stdout silenced: what its buffer still holds goes nowhere, not into a second message."""
    if isinstance(failure, OSError) and failure.filename is None and unnamed == "stdout":
        silence_stdout()
    return failure_text(program, failure, unnamed)


def finish(status: int, program: str):
    """End a launcher's process with `status` once stdout and stderr are written, skipping the
    interpreter's teardown (freeing every module's objects: about 5 ms of each fgzip run).
    Output that cannot be written (a closed stdout, a full disk) is one line on stderr and
    status 1, as gzip ends."""
    try:
        sys.stdout.flush()
    except OSError as failure:
        silence_stdout()  # the text layer keeps what it could not write: nowhere to fail again
        try:
            sys.stdout.flush()
        except OSError:
            pass
        if failure.errno == errno.EPIPE:  # the reader went away (`| head`): quietly, as SIGPIPE ends a tool
            status = SIGPIPE_STATUS
        else:
            _say(f"{program}: stdout: {failure.strerror or failure}")
            status = 1
    except ValueError:  # stdout closed by the tool itself
        pass
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(status)


def _say(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def leave(status: int) -> int:
    """Return `status`, or, where Dask was loaded, end the process now: its event-loop thread
    and exit handlers can still print as the interpreter ends, and every output is complete."""
    if "distributed" not in sys.modules:
        return status
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            if stream is sys.stdout:
                silence_stdout()
    os._exit(status)


def silence_stdout() -> None:
    """After the reader of stdout went away (`| head`): no second error at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
