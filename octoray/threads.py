"""One thread budget for a run: `-p N` (or the CPUs this process may use) bounds every thread
the run starts, the engine's workers and the kernels' own helpers together."""

from __future__ import annotations

import _thread
import os

_budget: int | None = None


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_budget(threads: int | None) -> None:
    """Bound the run's threads to `threads` (None: the available CPUs)."""
    global _budget
    _budget = max(1, threads) if threads else None


def budget() -> int:
    """Threads the run may keep busy at once."""
    return _budget or available_cpus()


class _Started:
    """A raw thread's end: `join()` waits for it, and returns at once when called again."""

    __slots__ = ("_finished",)

    def __init__(self, finished):
        self._finished = finished

    def join(self) -> None:
        self._finished.acquire()
        self._finished.release()


def start_thread(target, *args) -> _Started:
    """Run `target(*args)` on a new thread; `join()` the result to wait for it.  Raw threads,
    not `threading`: importing threading and queue is about 4 ms of fgzip's start-up, a
    visible share of a parallel `fgzip -d` (README, Performance).  Like daemon threads, they
    do not keep the process alive."""
    finished = _thread.allocate_lock()
    finished.acquire()

    def run():
        try:
            target(*args)
        finally:
            finished.release()

    _thread.start_new_thread(run, ())
    return _Started(finished)
