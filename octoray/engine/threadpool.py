"""A small thread pool for the embedded engine: submit, result, cancel, shutdown.

concurrent.futures would do, but importing it imports logging, traceback and re, and even
threading and queue cost fgzip's start-up milliseconds (octoray.threads.start_thread).  The
engine needs only what is here: a queue of tasks, threads that run them, and a lock per task
that its result waits on.
"""

from __future__ import annotations

import _queue
import _thread

from octoray.threads import start_thread

_PENDING, _RUNNING, _DONE, _CANCELLED = range(4)


class Task:
    """One submitted call; `result()` waits for it and returns its value or raises its error."""

    __slots__ = ("fn", "args", "state", "value", "error", "_finished")

    def __init__(self, fn, args: tuple):
        self.fn, self.args = fn, args
        self.state, self.value, self.error = _PENDING, None, None
        self._finished = _thread.allocate_lock()
        self._finished.acquire()

    def _run(self, before_release=None) -> None:
        if self.state == _PENDING:
            self.state = _RUNNING
            try:
                self.value = self.fn(*self.args)
            except BaseException as error:  # noqa: BLE001 - raised again by result(), in the caller
                self.error = error
            self.state = _DONE
        self.fn = self.args = None
        if before_release is not None:
            before_release()
        self._finished.release()

    def result(self):
        with self._finished:
            pass
        if self.state == _CANCELLED:
            raise RuntimeError("the task was cancelled")
        if self.error is not None:
            raise self.error
        return self.value

    def cancel(self) -> bool:
        """Keep a task that has not started from running; False once it has."""
        if self.state != _PENDING:
            return False
        self.state = _CANCELLED
        return True


class ThreadPool:
    """Up to `threads` threads taking tasks in the order they were submitted; `initializer`
    runs first on each thread (lanes pin a thread to its card there).  A thread starts when a
    task finds none idle, as pigz starts its compressors: `-p 64` on a small file starts as
    many threads as it has chunks."""

    def __init__(self, threads: int, initializer=None):
        self._tasks = _queue.SimpleQueue()
        self._limit, self._initializer = max(1, threads), initializer
        self._threads: list = []
        self._idle = 0  # threads waiting for a task that no submitted task has claimed yet
        self._lock = _thread.allocate_lock()

    def _work(self) -> None:
        failed = None
        if self._initializer is not None:
            try:
                self._initializer()
            except BaseException as error:  # noqa: BLE001 - every task this thread takes reports it
                failed = error
        while (task := self._tasks.get()) is not None:  # the first: the task that started it
            if failed is not None and task.state == _PENDING:
                task.fn, task.args = _raise, (failed,)
            task._run(before_release=self._idle_again)  # idle before anyone waiting on it resumes

    def _idle_again(self) -> None:
        with self._lock:
            self._idle += 1

    def submit(self, fn, *args) -> Task:
        task = Task(fn, args)
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._limit:
                self._threads.append(start_thread(self._work))
        self._tasks.put(task)
        return task

    def shutdown(self) -> None:
        """Cancel the tasks not started, let the running ones finish, and end the threads."""
        while True:
            try:
                task = self._tasks.get_nowait()
            except _queue.Empty:
                break
            if task is not None:
                task.cancel()
                task._run()  # releases whoever waits on it
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            thread.join()


def _raise(error: BaseException):
    raise error
