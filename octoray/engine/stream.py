"""Ordered streaming map with bounded memory: one reader, a pool of workers, one ordered writer.

Like pigz, at most `window` chunks are read but not yet written (pigz uses 2p+3), so memory
does not grow with the input.  Results come back in input order; the first worker error is
raised to the writer, and everything still in flight is cancelled.
"""

from __future__ import annotations

from collections import deque


def default_window(workers: int) -> int:
    return 2 * max(1, workers) + 3


def ordered_map(task, jobs, executor, window: int | None = None):
    """Yield ``task(*job)`` for each job, in order, with at most `window` jobs in flight.

    An executor that runs in this process (``executor.in_process``) does a lone job itself:
    a small input then needs no thread, and no cluster round trip.
    """
    jobs = iter(jobs)
    first = next(jobs, None)
    if first is None:
        return
    second = next(jobs, None)
    if second is None and getattr(executor, "in_process", False):
        yield task(*first)
        return
    window = window or default_window(executor.workers)
    pending: deque = deque()
    try:
        for job in _chain(first, second, jobs):
            pending.append(executor.submit(task, *job))
            while len(pending) >= window:
                yield executor.result(pending.popleft())
        while pending:
            yield executor.result(pending.popleft())
    finally:
        for future in pending:
            future.cancel()


def _chain(first, second, rest):
    yield first
    if second is not None:
        yield second
        yield from rest
