"""What fclassify reads: named images from image files; directories (walked recursively in
sorted order, non-images skipped); tar archives (plain or compressed, members named
``ARCHIVE:MEMBER``); CIFAR-10 binary batches (records named ``FILE:N``, N from 0); standard
input carrying any of these (``-``, ``-:MEMBER``, ``-:N``).

Memory does not grow with the input: a format is told from the first bytes, an input that is
not an image is left unread past them, and an image larger than INLINE_BYTES is never held
whole: it is decoded here, from its file (or from a temporary copy of a stream), in bounded
memory (octoray.formats.images).
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from octoray.jobs import DEFAULT_BATCH
from octoray.formats.images import CIFAR_RECORD, IMAGE_SUFFIXES, cifar_records, looks_like_image

INPUT_FORMATS = ("auto", "image", "tar", "cifar")
INLINE_BYTES = 8 << 20  # an encoded image up to this size is read whole; larger ones decode from a file
_HEAD = 512  # enough to see a tar header's "ustar" at offset 257
_SNIFF = 1 << 16  # what Pillow may read to recognise a format without a signature
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
_TAR_SUFFIXES = (".tar", ".tgz", ".tar.gz", ".tbz2", ".tar.bz2", ".txz", ".tar.xz")


@dataclass
class Item:
    """One image to classify, or one input that failed before it got that far."""

    name: str
    payload: object = None  # encoded bytes, or (32, 32, 3) uint8 pixels
    error: str | None = None
    source: tuple | None = None  # (path, (size, mtime)): the payload is that whole regular file


Note = Callable[[str, str], None]  # (name, what happened): worth a word under -v


def _is_tar(head: bytes) -> bool:
    return head[257:262] == b"ustar"


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


class _Prepended(io.RawIOBase):
    """A stream whose first bytes were already read (to detect its format).  Reads return what
    the stream has now (read1), as a raw stream's do: a slow pipe streams, batch by batch."""

    def __init__(self, head: bytes, rest):
        self._head, self._rest = head, rest
        self._read = getattr(rest, "read1", rest.read)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n], self._head = self._head[:n], self._head[n:]
            return n
        data = self._read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _read_exactly(stream, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = stream.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _tar_items(stream, archive: str, batch: int, note: Note) -> Iterator[Item]:
    """A tar's images and CIFAR-10 batches (members NAME.bin, as in CIFAR-10's own
    cifar-10-binary.tar.gz); "no images found" for a tar with neither, as for a directory."""
    found = False
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    if member.issym() or member.islnk():
                        note(f"{archive}:{member.name}", "a link, skipped")
                    continue
                name = f"{archive}:{member.name}"
                contents = tar.extractfile(member)
                head = contents.read(_HEAD)
                if looks_like_image(head[:16]) or _is_image_name(member.name):
                    found = True
                    yield _image_item(name, head, contents)
                elif _is_cifar(head, member.name):
                    found = True
                    yield from _cifar_items(io.BufferedReader(_Prepended(head, contents), 1 << 20), name, batch)
                else:
                    note(name, "not an image, skipped")
    except (tarfile.TarError, EOFError, OSError) as error:
        yield Item(archive, error=f"damaged archive ({error})")
        return
    if not found:
        yield Item(archive, error="no images found")


def _is_cifar(head: bytes, name: str) -> bool:
    """CIFAR-10 binary records by their name: a record starts with its label, 0..9."""
    return bool(head) and head[0] < 10 and name.lower().endswith(".bin")


def _cifar_items(stream, source: str, batch: int) -> Iterator[Item]:
    index = 0
    while True:
        block = _read_exactly(stream, CIFAR_RECORD * batch)
        whole = len(block) // CIFAR_RECORD
        for offset, pixels in enumerate(cifar_records(block, whole)):
            yield Item(f"{source}:{index + offset}", pixels)
        index += whole
        if len(block) % CIFAR_RECORD:
            yield Item(f"{source}:{index}", error=f"truncated CIFAR-10 record ({len(block) % CIFAR_RECORD} of {CIFAR_RECORD} bytes)")
            return
        if len(block) < CIFAR_RECORD * batch:
            return


def _stream_items(stream, name: str, input_format: str, batch: int, note: Note,
                  rewind: bool = False) -> Iterator[Item]:
    """Items of one byte stream (a file or stdin) whose format is detected or given."""
    head = _read_exactly(stream, _HEAD)
    kind = input_format
    if kind == "auto":
        if _is_tar(head) or (head.startswith(_COMPRESSED) and (name == "-" or name.lower().endswith(_TAR_SUFFIXES))):
            kind = "tar"
        elif looks_like_image(head):
            kind = "image"
        elif _is_cifar(head, name):
            kind = "cifar"
        elif name == "-" and len(head) == _HEAD and not any(head):
            kind = "tar"  # an empty tar: a zero block ends the archive (a CIFAR-10 record is never that dark)
        elif head and head[0] < 10 and name == "-":
            kind = "cifar"  # a record starts with its label, 0..9
        else:
            kind = "image"  # Pillow knows formats without a signature; else "not an image"
    if kind == "image":
        if input_format == "auto" and not looks_like_image(head):
            head += _read_exactly(stream, _SNIFF - len(head))
            from octoray.formats.images import recognised_image

            if not recognised_image(head):  # and the rest is never read
                yield Item(name, error="empty file" if not head else "not an image")
                return
        yield _image_item(name, head, stream, rewind)
        return
    source = io.BufferedReader(_Prepended(head, stream), 1 << 20)
    if kind == "tar":
        yield from _tar_items(source, name, batch, note)
    else:
        yield from _cifar_items(source, name, batch)


def _image_item(name: str, head: bytes, stream, rewind: bool = False) -> Item:
    """One encoded image whose first bytes `head` were read from `stream`: its bytes when they
    are few, else its pixels, decoded here from the stream itself (`rewind`: a regular file
    read from its start) or from a temporary copy."""
    rest = _read_exactly(stream, INLINE_BYTES + 1 - len(head))
    if len(head) + len(rest) <= INLINE_BYTES:
        return Item(name, head + rest)
    if rewind:
        del rest
        stream.seek(0)
        return _decoded_here(name, io.BufferedReader(stream, 1 << 16) if isinstance(stream, io.RawIOBase) else stream)
    with tempfile.TemporaryFile() as copy:
        copy.write(head)
        copy.write(rest)
        del rest
        shutil.copyfileobj(stream, copy, 1 << 20)
        copy.seek(0)
        return _decoded_here(name, copy)


def _decoded_here(name: str, file) -> Item:
    from octoray.formats.images import ImageError, decode_image

    try:
        return Item(name, decode_image(file))
    except ImageError as error:
        return Item(name, error=str(error))


def _file_items(path: str, input_format: str, batch: int, note: Note) -> Iterator[Item]:
    try:
        stream = open(path, "rb", buffering=0)
    except OSError as error:
        yield Item(path, error=error.strerror or str(error))
        return
    with stream:
        try:
            st = os.fstat(stream.fileno())
            regular = stat.S_ISREG(st.st_mode)  # not a pipe: can be read again
            for item in _stream_items(stream, path, input_format, batch, note, regular):
                if regular and item.name == path and isinstance(item.payload, bytes):
                    item.source = (os.path.abspath(path), (st.st_size, st.st_mtime_ns))
                yield item
        except OSError as error:
            yield Item(path, error=error.strerror or str(error))


_LARGE = object()  # _read_image_file's answer for an image file too large to hold


def _read_image_file(path: str, first: int = 1 << 16, seen: list | None = None):
    """The file's bytes; _LARGE for an image file over INLINE_BYTES; None (after one read)
    when it is not an image.  Plain system calls: a folder of photos is mostly files of a few
    KiB, and io.open's objects cost as much again as the read itself (measured: 10 against
    18 us a file).  `seen` gets the file's (size, mtime) where it was read whole at once."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        data = os.read(fd, first)
        if not (looks_like_image(data[:16]) or _is_image_name(path)):
            return None
        if len(data) < first:
            if seen is not None:
                st = os.fstat(fd)
                if st.st_size == len(data):
                    seen.append((st.st_size, st.st_mtime_ns))
            return data
        parts, size = [data], len(data)
        while True:
            part = os.read(fd, min(1 << 20, INLINE_BYTES + 1 - size))
            if not part:
                return b"".join(parts)
            parts.append(part)
            size += len(part)
            if size > INLINE_BYTES:
                return _LARGE
    finally:
        os.close(fd)


def _directory_items(top: str, batch: int, note: Note) -> Iterator[Item]:
    found = False
    for path in _walk(top, note):
        if path.lower().endswith(".bin") and _is_cifar(_first_byte(path), path):  # cifar-10-batches-bin/
            found = True
            yield from _file_items(path, "cifar", batch, note)
            continue
        seen: list = []
        try:
            data = _read_image_file(path, seen=seen)
        except OSError as error:
            found = True
            yield Item(path, error=error.strerror or str(error))
            continue
        if data is None:
            note(path, "not an image, skipped")
            continue
        found = True
        if data is _LARGE:
            with open(path, "rb") as file:
                yield _decoded_here(path, file)
        else:
            yield Item(path, data, source=(os.path.abspath(path), seen[0]) if seen else None)
    if not found:
        yield Item(top, error="no images found")


def _walk(top: str, note: Note) -> Iterator[str]:
    """The files under `top`: each directory's regular files (links to them followed) in
    sorted order, then its subdirectories, each walked the same way.  A FIFO or a device is
    never opened (a read would wait for ever) and a link to a directory is not followed (as
    find and gzip -r do not), each noted.  Directory entries' own types (scandir): no stat a
    file, where the walk meets thousands."""
    pending = [top]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:
            note(error.filename or folder, error.strerror)
            continue
        subfolders = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(entry.path)
            elif entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path)):
                yield entry.path  # a dangling link too: opening it says what is wrong
            elif entry.is_dir():
                note(entry.path, "a link to a directory, not followed")
            else:
                note(entry.path, "not a regular file, skipped")
        pending.extend(reversed(subfolders))


def _first_byte(path: str) -> bytes:
    try:
        with open(path, "rb", buffering=0) as file:
            return file.read(1)
    except OSError:
        return b""


def _path_items(path: str, input_format: str, batch: int, note: Note, stdin) -> Iterator[Item]:
    if path == "-":
        try:
            yield from _stream_items(stdin, "-", input_format, batch, note)
        except OSError as failure:  # a stdin the caller closed, a device's read error
            yield Item("-", error=failure.strerror or str(failure))
    elif os.path.isdir(path):
        yield from _directory_items(path, batch, note)
    else:
        yield from _file_items(path, input_format, batch, note)


def _listed_paths(files_from: str, stdin, null: bool) -> Iterator[str]:
    """The paths a list file names: one a line, or (`null`) each ended by NUL."""
    stream = stdin if files_from == "-" else open(files_from, "rb")
    try:
        yield from _list_entries(stream, null)
    except OSError as failure:  # reading the list (a closed stdin): the message names it
        raise OSError(failure.errno, failure.strerror, files_from) from None
    finally:
        if stream is not stdin:
            stream.close()


def _list_entries(stream, null: bool) -> Iterator[str]:
    """The entries of an open list: lines, or (`null`) NUL-ended names."""
    if null:
        rest = b""
        while True:
            block = stream.read(1 << 16)
            if not block:
                break
            *whole, rest = (rest + block).split(b"\0")
            yield from (os.fsdecode(path) for path in whole if path)
        if rest:
            yield os.fsdecode(rest)
    else:
        for line in stream:
            path = line.rstrip(b"\r\n")
            if path:
                yield os.fsdecode(path)


def items(paths: Iterable[str], *, files_from: Iterable[str] = (), null: bool = False,
          input_format: str = "auto", batch: int = DEFAULT_BATCH, note: Note = lambda _name, _text: None,
          stdin=None) -> Iterator[Item]:
    """Every image named by the list files (`files_from`, in order), then by `paths` (stdin
    when neither names any)."""
    paths, lists = list(paths), list(files_from or ())
    for listed in lists:
        for path in _listed_paths(listed, stdin, null):
            yield from _path_items(path, input_format, batch, note, stdin)
    if not paths and not lists:
        paths = ["-"]
    for path in paths:
        yield from _path_items(path, input_format, batch, note, stdin)
