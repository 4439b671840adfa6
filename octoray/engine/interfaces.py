"""The executor interface every engine backend satisfies (the embedded threads, Dask).

A typing.Protocol, kept out of the start-up path (typing's import costs fgzip time): the
implementations satisfy it structurally, and tests/test_engine.py checks that they do.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable


@runtime_checkable
class Executor(Protocol):
    workers: int
    """How many tasks can run at once; it sizes the ordered map's window."""
    in_process: bool
    """Tasks run in this process: a lone job is then run directly, with no thread or round trip."""
    jobs_per_task: int
    """Consecutive jobs one task carries (a cluster's per-task cost is high)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Start fn(*args); a future with result() and cancel()."""

    def result(self, future: Any) -> Any:
        """The task's value, or its exception raised."""

    def describe(self) -> list[dict]:
        """One row per worker (worker, accelerator, threads, tasks), for -v and octoray status."""

    def close(self) -> None:
        """Release threads, connections and clusters the executor started."""
