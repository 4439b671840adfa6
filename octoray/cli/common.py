"""What every octoray command line shares: which failures are the engine's (a message, not a
bug), how a failure is worded, and how a run that used Dask leaves."""

from __future__ import annotations

import os
import sys


def engine_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a cluster or an accelerator raises, without importing Dask or the
    kernels when the run never loaded them."""
    found = []
    dask_executor = sys.modules.get("octoray.engine.dask_executor")
    kernels = sys.modules.get("octoray.kernels")
    if dask_executor is not None:
        found.append(dask_executor.ClusterError)
    if kernels is not None:
        found.append(kernels.AcceleratorError)
    return tuple(found)


def failure_text(program: str, failure: BaseException) -> str:
    """One line for a failure that ends the run: the engine's own message, a system error
    with the file it concerns, or (a bug) what broke, never a traceback."""
    if isinstance(failure, engine_errors()):
        return f"{program}: {failure}"
    if isinstance(failure, OSError):
        where = failure.filename if failure.filename is not None else "stdout"
        return f"{program}: {where}: {failure.strerror or failure}"
    return f"{program}: internal error: {type(failure).__name__}: {failure}"


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
