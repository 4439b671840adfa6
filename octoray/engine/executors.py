"""The embedded executor: threads in this process.  Dask's is dask_executor.py; both
satisfy the Executor protocol of octoray.engine.interfaces."""

from __future__ import annotations

from octoray.threads import available_cpus, set_budget


class _Done:
    """A finished task, for the single-worker case that needs no thread."""

    __slots__ = ("value", "error")

    def __init__(self, fn, args):
        self.value = self.error = None
        try:
            self.value = fn(*args)
        except Exception as error:  # handed to the writer, which re-raises it
            self.error = error

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value

    def cancel(self) -> bool:
        return False


class LocalExecutor:
    """The embedded default: threads in this process (the kernels release the GIL).

    The thread pool starts with the first task, so a run that never needs it pays nothing.
    """

    in_process = True
    jobs_per_task = 1

    def __init__(self, threads: int | None = None):
        self.workers = max(1, threads or available_cpus())
        set_budget(self.workers)  # the kernels' own helper threads count against it too
        self._pool = None
        self.tasks_done = 0

    def submit(self, fn, *args):
        self.tasks_done += 1
        if self.workers == 1:
            return _Done(fn, args)
        if self._pool is None:  # a stream longer than one task: tune for it
            from octoray.engine.allocator import keep_freed_memory
            from octoray.engine.threadpool import ThreadPool

            keep_freed_memory()
            self._pool = ThreadPool(self.workers)
        return self._pool.submit(fn, *args)

    @staticmethod
    def result(future):
        return future.result()

    def describe(self) -> list[dict]:
        from octoray.kernels import local_accelerator

        return [{"worker": "local", "accelerator": local_accelerator().name, "threads": self.workers,
                 "tasks": self.tasks_done}]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
