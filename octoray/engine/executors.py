"""Executors the engine runs on: the embedded thread pool, and (see cluster.py) Dask.

An executor offers ``submit(fn, *args) -> future``, ``result(future)``, ``workers`` (how
many tasks can run at once, which sizes the window) and ``describe()`` for ``-v``/status.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class _InlineExecutor:
    """Runs each task on submit: one worker needs no thread and no hand-over."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as error:  # handed to the writer, which re-raises it
            future.set_exception(error)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


class LocalExecutor:
    """The embedded default: threads in this process (the kernels release the GIL)."""

    def __init__(self, threads: int | None = None):
        self.workers = max(1, threads or available_cpus())
        self._pool = _InlineExecutor() if self.workers == 1 else ThreadPoolExecutor(
            self.workers, thread_name_prefix="octoray")

    def submit(self, fn, *args) -> Future:
        return self._pool.submit(fn, *args)

    @staticmethod
    def result(future: Future):
        return future.result()

    def describe(self) -> list[dict]:
        from octoray.kernels import local_accelerator

        return [{"worker": "local", "accelerator": local_accelerator().name, "threads": self.workers}]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
