"""Ordered streaming map with bounded memory: one reader, a pool of workers, one ordered writer.

Like pigz, at most `window` chunks are read but not yet written (pigz uses 2p+3), so memory
does not grow with the input.  Results come back in input order; the first worker error is
raised to the writer, and everything still in flight is cancelled.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_window(workers: int) -> int:
    return 2 * max(1, workers) + 3


def ordered_map(task: Callable[..., R], jobs: Iterable[tuple], executor, window: int | None = None) -> Iterator[R]:
    """Yield ``task(*job)`` for each job, in order, with at most `window` jobs in flight."""
    window = window or default_window(executor.workers)
    pending: deque = deque()
    try:
        for job in jobs:
            pending.append(executor.submit(task, *job))
            while len(pending) >= window:
                yield executor.result(pending.popleft())
        while pending:
            yield executor.result(pending.popleft())
    finally:
        for future in pending:
            future.cancel()
