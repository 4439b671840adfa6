"""Pipes and files done carefully: full-sized chunk reads, whole writes, big pipe buffers."""

from __future__ import annotations

import os
import stat
import sys

PIPE_BUFFER = 1 << 20  # a 1 MiB pipe buffer doubles Python's pipe read rate here
F_SETPIPE_SZ = 1031  # Linux fcntl command; not in the fcntl module before Python 3.10 everywhere


def enlarge_pipe(fd: int, size: int = PIPE_BUFFER) -> None:
    """Grow the kernel buffer of `fd` if it is a pipe; quietly do nothing where that fails."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            import fcntl

            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", F_SETPIPE_SZ), size)
    except OSError:
        pass


def read_full(fd: int, size: int) -> memoryview:
    """Up to `size` bytes, fewer only at the end of the input, however the pipe delivers them."""
    view = _empty_buffer(size)
    filled = 0
    while filled < size:
        got = os.readv(fd, [view[filled:]])
        if got == 0:
            return view[:filled]
        filled += got
    return view


def _empty_buffer(size: int) -> memoryview:
    """A writable buffer to read into: numpy's uninitialised one where numpy is loaded
    already (a Dask client, where bytearray's zero-filling is CPU spent on every byte it
    pushes), else a bytearray (fgzip's start-up does not import numpy for this)."""
    np = sys.modules.get("numpy")
    if np is not None and hasattr(np, "empty"):
        return memoryview(np.empty(size, dtype=np.uint8)).cast("B")
    return memoryview(bytearray(size))


def read_full_bytes(fd: int, size: int) -> bytes:
    """read_full as bytes, for readers that slice and join what they read: no zero-filled
    buffer, and no copy when one read brings it all (a file, a full pipe)."""
    data = os.read(fd, size)
    if not data or len(data) == size:
        return data
    parts, got = [data], len(data)
    while got < size:
        part = os.read(fd, size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def read_chunks(fd: int, size: int):
    """(chunk, is_last) pairs of `size` bytes; reads one ahead so the last chunk is known."""
    chunk = read_full(fd, size)
    while chunk:
        following = read_full(fd, size) if len(chunk) == size else memoryview(b"")
        yield chunk, not following
        chunk = following


def write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class BackgroundWriter:
    """Writes on a thread of its own so that computing the next piece overlaps the write.

    The thread starts once more than `SMALL` bytes are waiting: a small output (most files a
    script compresses) is written at `close` without starting one, and fgzip's start-up
    starts no thread for it.  The queue is bounded (memory stays flat); a write
    error is raised by the next `write` or by `close`.
    """

    SMALL = 1 << 16

    def __init__(self, fd: int, depth: int = 4):
        self.fd, self.depth = fd, depth
        self._held: list = []  # pieces written before the thread started
        self._held_bytes = 0
        self._queue = self._thread = None
        self._error: BaseException | None = None

    def _start(self) -> None:
        import _queue

        from octoray.threads import start_thread

        self._queue, self._free = _queue.SimpleQueue(), _queue.SimpleQueue()  # pieces, free slots
        for _ in range(self.depth):
            self._free.put(True)
        self._thread = start_thread(self._run)
        for piece in self._held:
            self._put(piece)
        self._held = []

    def _put(self, piece) -> None:
        self._free.get()  # waits while `depth` pieces are queued
        self._queue.put(piece)

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            if self._error is None:
                try:
                    write_all(self.fd, data)
                except BaseException as error:  # reported to the producer
                    self._error = error
            self._free.put(True)

    def write(self, data) -> None:
        if self._error is not None:
            raise self._error
        if not data:
            return
        if self._thread is not None:
            self._put(data)
            return
        self._held.append(bytes(data))
        self._held_bytes += len(data)
        if self._held_bytes > self.SMALL:
            self._start()

    def close(self) -> None:
        if self._thread is None:
            write_all(self.fd, b"".join(self._held))
            self._held = []
            return
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
