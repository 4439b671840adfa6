"""Byte ranges of a file that the workers read themselves, instead of the client shipping them.

When the input is a regular file that the workers can see (the same host, or a shared
filesystem: the same size and modification time seen there), a chunk travels as a
:class:`FileChunk` (path, offset, length, the file's identity) and the worker reads it.  Every
read checks the identity before and after: a file that changes under the workers raises
:class:`FileChanged`, never a silent mix of old and new bytes.
"""

from __future__ import annotations

import os
import stat

from octoray.engine.faults import ClusterError

CHANGED = "changed while the workers were reading it"


class FileChanged(ClusterError):
    """The file is not the one the run started on (written to, replaced, or another file):
    the run fails (the tools print "NAME: PATH: changed ...", exit 1), never mixes.  Raised on
    a worker, it sends the client to look: changed there too, or only another file here."""

    def __init__(self, text: str, path: str = "", reason: str = CHANGED):
        super().__init__(text)
        self.path, self.reason = path, reason

    def __reduce__(self):
        return FileChanged, (str(self), self.path, self.reason)


def changed(path: str, reason: str = CHANGED) -> FileChanged:
    return FileChanged(f"{path}: {reason}", path, reason)


def identity(st: os.stat_result) -> tuple[int, int]:
    """What must match for two views of a file to hold the same bytes: size and mtime (ns)."""
    return st.st_size, st.st_mtime_ns


class FileChunk:
    """`length` bytes at `offset` of `path`, as the file was when the run started."""

    __slots__ = ("path", "offset", "length", "identity")

    def __init__(self, path: str, offset: int, length: int, ident: tuple[int, int]):
        self.path, self.offset, self.length, self.identity = path, offset, length, ident

    def __len__(self) -> int:
        return self.length

    def __reduce__(self):
        return FileChunk, (self.path, self.offset, self.length, self.identity)

    def read(self, fd: int | None = None) -> bytes:
        """The bytes, from `fd` or by opening the path; FileChanged if the file is not the same."""
        own = fd is None
        if own:
            try:
                fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as error:  # not there, or not readable, where this runs
                raise changed(self.path, f"cannot be read here ({error.strerror or error})") from None
        try:
            self._check(fd)
            data = os.pread(fd, self.length, self.offset)
            while len(data) < self.length:  # pread may return less than asked on some filesystems
                more = os.pread(fd, self.length - len(data), self.offset + len(data))
                if not more:
                    raise changed(self.path)
                data += more
            self._check(fd)
            return data
        finally:
            if own:
                os.close(fd)

    def _check(self, fd: int) -> None:
        if identity(os.fstat(fd)) != self.identity:
            raise changed(self.path)


SAMPLE_PIECE = 4096


def sample_digest(path: str | bytes) -> str | None:
    """A digest of three 4 KiB pieces of the file (start, middle, end): the workers' view of a
    file must give the one this host gives before they read it themselves, so that another
    file with the same size and mtime (node-local copies, say) is not compressed in its place.
    None where the file cannot be read."""
    import hashlib

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        digest = hashlib.blake2b(str(size).encode(), digest_size=16)
        for offset in sorted({0, max(0, size // 2 - SAMPLE_PIECE // 2), max(0, size - SAMPLE_PIECE)}):
            digest.update(os.pread(fd, SAMPLE_PIECE, offset))
        return digest.hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


def resolve(value):
    """A job argument as the task needs it: a FileChunk becomes its bytes."""
    return value.read() if isinstance(value, FileChunk) else value


def whole_file(path: str, ident: tuple[int, int]) -> FileChunk:
    """All of a file (an image fclassify's workers read themselves)."""
    return FileChunk(path, 0, ident[0], ident)


def check_unchanged(chunk: FileChunk) -> None:
    """FileChanged if `chunk`'s file is not, on this host, the file the run started on."""
    try:
        seen = identity(os.stat(chunk.path))
    except OSError:
        raise changed(chunk.path) from None
    if seen != chunk.identity:
        raise changed(chunk.path)


def has_ranges(jobs) -> bool:
    return any(isinstance(value, FileChunk) for job in jobs for value in job)


def file_source(fd: int) -> tuple[str, int, tuple[int, int]] | None:
    """(path, where reading starts, identity) for a regular file open on `fd` whose path names
    the same file; None for anything else (a pipe, a deleted file, ...)."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        path = os.readlink(f"/proc/self/fd/{fd}")
        named = os.stat(path)
        if (named.st_dev, named.st_ino) != (st.st_dev, st.st_ino):
            return None
        start = os.lseek(fd, 0, os.SEEK_CUR)
    except (OSError, ValueError):
        return None
    return os.path.abspath(path), start, identity(st)


def file_chunks(path: str, start: int, ident: tuple[int, int], block_size: int):
    """(FileChunk, is_last) pairs covering the file from `start`, as read_chunks gives bytes."""
    size = ident[0]
    offset = start
    if offset >= size:
        return
    while offset < size:
        length = min(block_size, size - offset)
        yield FileChunk(path, offset, length, ident), offset + length >= size
        offset += length
