"""Ordered streaming map with bounded memory: one reader, a pool of workers, one ordered writer.

Like pigz, at most `window` tasks are read but not yet written (pigz uses 2p+3), so memory
does not grow with the input.  Results come back in input order; the first worker error is
raised to the writer, and everything still in flight is cancelled.

An executor whose tasks cost much to send (a Dask cluster) says how many jobs one task
carries (``jobs_per_task``); consecutive jobs then travel and run together, and the writer
still sees one result per job, in order.  The last jobs of the stream travel in shrinking
groups, ending one per task (a few are read ahead to know where the end is): the cards then
finish together instead of some idling while others end a whole group.  The results are the
same either way.
"""

from __future__ import annotations

from _collections import deque  # collections' own import costs every fgzip run a millisecond or two


def default_window(workers: int) -> int:
    return 2 * max(1, workers) + 3


class JobGroup:
    """Consecutive jobs sent as one object (Dask would scatter a plain list item by item).

    Buffers in the jobs (chunks of input) travel out of band where the pickler can take them
    (protocol 5, as Dask's comms use it): no copy into the pickle stream, and memoryviews
    need no conversion to bytes first.  They arrive as buffers (bytes or memoryviews)."""

    __slots__ = ("jobs",)

    def __init__(self, jobs: list[tuple]):
        self.jobs = jobs

    def __reduce_ex__(self, protocol):
        if protocol >= 5:
            from pickle import PickleBuffer

            def carry(value):
                return PickleBuffer(value) if isinstance(value, (memoryview, bytearray)) else value
        else:  # memoryviews cannot be pickled in band
            def carry(value):
                return bytes(value) if isinstance(value, memoryview) else value
        return _rebuilt_group, ([tuple(carry(a) for a in job) for job in self.jobs],)


def map_values(value, fn):
    """`value` with `fn` applied to each value inside it, through groups of jobs (a task's
    group of fclassify batches holds a group of images)."""
    if isinstance(value, JobGroup):
        return JobGroup([tuple(map_values(v, fn) for v in job) for job in value.jobs])
    return fn(value)


def _rebuilt_group(jobs: list[tuple]) -> JobGroup:
    return JobGroup(jobs)


def run_group(group: JobGroup, task) -> list:
    """What one task of a grouping executor runs: the jobs one after the other."""
    return [task(*job) for job in group.jobs]


def ordered_map(task, jobs, executor, window: int | None = None):
    """Yield ``task(*job)`` for each job, in order, with at most `window` tasks in flight.

    An executor that runs in this process (``executor.in_process``) does a lone job itself:
    a small input then needs no thread, and no cluster round trip.
    """
    per_task = executor.jobs_per_task
    if per_task > 1:
        tail = per_task * max(1, executor.workers)  # a group's worth for each task slot
        groups = ((JobGroup(group), task) for group in batched(jobs, per_task, tail))
        for results in _ordered(run_group, groups, executor, window):
            yield from results
    else:
        yield from _ordered(task, jobs, executor, window)


def _ordered(task, jobs, executor, window: int | None):
    jobs = iter(jobs)
    first = next(jobs, None)
    if first is None:
        return
    second = next(jobs, None)
    if second is None and executor.in_process:
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


def batched(items, size: int, tail: int = 0):
    """Lists of `size` consecutive items, except the last `tail` items (or fewer), read ahead
    to know which are the last: those come in shrinking lists (a quarter of what is left per
    `tail // size` slots, at most `size`), down to one item each, so that the workers finish
    together without a task per item for the whole tail."""
    ahead: deque = deque()
    for item in items:
        ahead.append(item)
        if len(ahead) >= size + tail:
            yield [ahead.popleft() for _ in range(size)]
    if not tail and ahead:
        yield list(ahead)
        return
    share = 4 * max(1, tail // size)
    while ahead:
        count = max(1, min(size, len(ahead) // share))
        yield [ahead.popleft() for _ in range(count)]


def _chain(first, second, rest):
    yield first
    if second is not None:
        yield second
        yield from rest
