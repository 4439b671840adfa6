"""Where the work runs: the embedded in-process default, or (later) a Dask cluster.

The CLI asks for an executor here and never talks to Dask itself.
"""

from __future__ import annotations

from octoray.engine.executors import LocalExecutor


def open_executor(threads: int | None = None):
    """The embedded default: a thread pool in this process, ready in microseconds."""
    return LocalExecutor(threads)
