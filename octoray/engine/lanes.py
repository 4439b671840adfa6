"""The embedded default on every card of the host: threads pinned to lanes, one lane per card.

A card's call waits without holding the GIL, so each card gets two threads: while one waits
for the card, the other does its chunk's host work (CRC, copies) and queues the next call,
and the card never idles between calls.  On the CPU (no card) it is the plain thread pool,
one thread per core.  Lanes are opened when a stream first needs them (``workers``), so a
run that never computes (fgzip -d) opens no card.
"""

from __future__ import annotations

import itertools

from octoray.engine.executors import LocalExecutor

THREADS_PER_CARD = 2


class LaneExecutor(LocalExecutor):
    def __init__(self, threads: int | None = None):
        self._threads_asked = threads
        self._lanes = None
        self._workers = 1
        self._ready = False
        super().__init__(threads)  # its thread budget is the CPU's: no card is opened here
        self._ready = True

    @property
    def lanes(self) -> list:
        if self._lanes is None:
            from octoray.kernels import local_lanes

            self._lanes = local_lanes()
        return self._lanes

    @property
    def on_cards(self) -> bool:
        return any(getattr(lane, "device_name", None) for lane in self.lanes)

    @property
    def workers(self) -> int:
        if not self._ready or not self.on_cards:
            return self._workers
        return max(1, self._threads_asked or THREADS_PER_CARD * len(self.lanes))

    @workers.setter
    def workers(self, value: int) -> None:
        self._workers = value

    def submit(self, fn, *args):
        if not self.on_cards:
            return super().submit(fn, *args)
        self.tasks_done += 1
        if self._pool is None:
            from octoray.engine.allocator import keep_freed_memory
            from octoray.engine.threadpool import ThreadPool
            from octoray.kernels import pin_thread

            keep_freed_memory()
            order = itertools.cycle(self.lanes)
            self._pool = ThreadPool(self.workers, initializer=lambda: pin_thread(next(order)))
        return self._pool.submit(_counted, fn, args)

    def describe(self) -> list[dict]:
        """One row per lane: its card (or the CPU), its threads and the tasks it ran."""
        lanes = self.lanes
        if not self.on_cards:
            return super().describe()
        share = self.workers // len(lanes)
        return [{"worker": "local", "accelerator": lane.name,
                 "threads": share + (1 if i < self.workers % len(lanes) else 0),
                 "tasks": getattr(lane, "tasks_done", 0)} for i, lane in enumerate(lanes)]


def _counted(fn, args):
    from octoray.kernels import local_accelerator
    from octoray.kernels.lanes import record_task

    record_task(local_accelerator())
    return fn(*args)
