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
            def carry(value):
                return out_of_band(value) if isinstance(value, (memoryview, bytearray)) else value
        else:  # memoryviews cannot be pickled in band
            def carry(value):
                return bytes(value) if isinstance(value, memoryview) else value
        return _rebuilt_group, ([tuple(carry(a) for a in job) for job in self.jobs],)


def out_of_band(value):
    """A PickleBuffer over `value`, for protocol 5's out-of-band buffers.

    A memoryview is handed over through a NumPy array over it, never directly: on Python
    before 3.12.7 the garbage collector, clearing a cycle that holds a memoryview and the
    PickleBuffer exporting it (Dask's frames in the traceback of a send to a killed worker),
    frees the memory under the buffer, and the process crashes (CPython issue 77894).  The
    collector does not track NumPy arrays, so the view under one stays alive until the
    buffer is released."""
    from pickle import PickleBuffer

    if isinstance(value, memoryview):
        import numpy as np

        value = np.frombuffer(value, dtype=np.uint8)
    return PickleBuffer(value)


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
    a small input then needs no thread, and no cluster round trip.  A grouping executor may
    let a long stream's groups grow (``largest_jobs_per_task``, see `batched`); a larger
    group counts as that many groups of the usual size against `window`, but the window
    always holds a group for each task slot and two more.
    """
    per_task = executor.jobs_per_task
    if per_task > 1:
        slots = max(1, executor.workers)
        tail = per_task * slots  # a group's worth for each task slot
        window = window or default_window(slots)
        least = slots + 2
        largest = min(max(per_task, getattr(executor, "largest_jobs_per_task", per_task)),
                      max(per_task, 2 * window * per_task // least))  # at most twice the usual input in flight
        groups = ((JobGroup(group), task) for group in batched(jobs, per_task, tail, largest, slots))
        weight = (lambda group, _task: -(-len(group.jobs) // per_task)) if largest > per_task else None
        for results in _ordered(run_group, groups, executor, window, weight, least if weight else 0):
            yield from results
    else:
        yield from _ordered(task, jobs, executor, window)


def _ordered(task, jobs, executor, window: int | None, weight=None, least: int = 0):
    jobs = iter(jobs)
    first = next(jobs, None)
    if first is None:
        return
    second = next(jobs, None)
    if second is None and executor.in_process:
        yield task(*first)
        return
    window = window or default_window(executor.workers)
    pending: deque = deque()  # (future, its weight)
    held = 0
    try:
        for job in _chain(first, second, jobs):
            cost = weight(*job) if weight else 1
            pending.append((executor.submit(task, *job), cost))
            held += cost
            while held >= window and len(pending) > least:
                future, cost = pending.popleft()
                held -= cost
                yield executor.result(future)
        while pending:
            yield executor.result(pending.popleft()[0])
    finally:
        for future, _ in pending:
            future.cancel()


TASKS_PER_SLOT = 4
"""A growing stream's groups stay small enough that every task slot gets this many of the
input read so far."""


def batched(items, size: int, tail: int = 0, largest: int = 0, slots: int = 1):
    """Lists of `size` consecutive items, except the last `tail` items (or fewer), read ahead
    to know which are the last: those come in shrinking lists (a quarter of what is left per
    `tail // size` slots, at most `size`), down to one item each, so that the workers finish
    together without a task per item for the whole tail.  With `largest` above `size` the
    lists grow as the stream proves long, up to `largest`, while every one of `slots` task
    slots still gets TASKS_PER_SLOT lists of what has been read: fewer, larger tasks where
    each costs the client (a Dask request), and a short stream's first tasks still reach
    every worker."""
    ahead: deque = deque()
    step, read = size, 0
    for item in items:
        ahead.append(item)
        read += 1
        if len(ahead) >= step + tail:
            yield [ahead.popleft() for _ in range(step)]
            if largest > size:
                step = min(largest, max(size, read // (TASKS_PER_SLOT * max(1, slots))))
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
