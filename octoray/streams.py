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


LAZY_BUFFER = 1 << 24  # from this size a read buffer is anonymous memory, paid for as it fills


def _empty_buffer(size: int) -> memoryview:
    """A writable buffer to read into: numpy's uninitialised one where numpy is loaded
    already (a Dask client, where bytearray's zero-filling is CPU spent on every byte it
    pushes), else a bytearray (fgzip's start-up does not import numpy for this).  A large
    one is an anonymous mapping, whose pages the kernel provides only where a read writes:
    `-b 524288` on a small file would otherwise hold 512 MiB of zeros."""
    if size >= LAZY_BUFFER:
        import mmap

        return memoryview(mmap.mmap(-1, size))
    np = sys.modules.get("numpy")
    if np is not None and hasattr(np, "empty"):
        return memoryview(np.empty(size, dtype=np.uint8)).cast("B")
    return memoryview(bytearray(size))


def read_full_bytes(fd: int, size: int) -> bytes:
    """read_full as bytes, for readers that slice and join what they read: no zero-filled
    buffer, and no copy when one read brings it all (a file, a full pipe); the rest of a
    short read goes into the same bytes object (octoray/_streams.c) where that is built."""
    global _read_rest
    data = os.read(fd, size)
    if not data or len(data) == size:
        return data
    if _read_rest is None:
        try:
            from octoray._streams import read_rest as _read_rest
        except ImportError:  # a checkout whose extensions are not built
            _read_rest = _joined_rest
    return _read_rest(fd, data, size)


_read_rest = None  # octoray._streams.read_rest once a short read needs it


def _joined_rest(fd: int, data: bytes, size: int) -> bytes:
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


def in_place(write):
    """`write` for a caller that only waits between pieces: a BackgroundWriter's write_here
    (see there), any other callable as it is."""
    writer = getattr(write, "__self__", None)
    return writer.write_here if isinstance(writer, BackgroundWriter) else write


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

    def write_here(self, data) -> None:
        """Write on the caller's thread, after everything queued: for a caller that only waits
        between pieces (an ordered collector of results), where the thread would add a
        handoff per piece and overlap nothing."""
        if self._error is not None:
            raise self._error
        if not data:
            return
        if self._held:
            write_all(self.fd, b"".join(self._held))
            self._held, self._held_bytes = [], 0
        elif self._thread is not None:
            self._drain()
        write_all(self.fd, data)

    def _drain(self) -> None:
        """Wait until the thread has written every queued piece (it frees a slot after each)."""
        for _ in range(self.depth):
            self._free.get()
        for _ in range(self.depth):
            self._free.put(True)
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        if self._thread is None:
            write_all(self.fd, b"".join(self._held))
            self._held = []
            return
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
