"""gzip jobs: compress a stream in parallel chunks into one member; decompress members.

These functions know the format and the engine, not the command line: the CLI hands them
file descriptors and options and maps their exceptions to gzip's messages.
"""

from __future__ import annotations

import os
import struct

from octoray.engine.stream import ordered_map
from octoray.formats import gzip as gz
from octoray.streams import ReadAhead, read_chunks

DEFAULT_BLOCK_SIZE = 1 << 20  # 1 MiB: larger chunks unbalance two threads, smaller cost ratio


class Totals:
    def __init__(self, bytes_in: int = 0, bytes_out: int = 0, overhead: int = 0):
        self.bytes_in, self.bytes_out = bytes_in, bytes_out
        self.overhead = overhead  # header and trailer bytes, which gzip leaves out of its ratio

    def ratio_saved(self) -> float:
        """Percentage gzip -v prints: the share of the input that deflate saved."""
        compressed = self.bytes_out - self.overhead
        return 100.0 * (self.bytes_in - compressed) / self.bytes_in if self.bytes_in else 0.0


def compress_stream(fd_in: int, write, executor, *, level: int = 6, block_size: int = DEFAULT_BLOCK_SIZE,
                    independent: bool = False, name: bytes | None = None, mtime: int = 0) -> Totals:
    """Compress everything readable from `fd_in` into one gzip member passed to `write`."""
    from octoray.kernels.tasks import deflate_chunk

    head = gz.header(name, mtime, level)
    write(head)
    assembler = gz.MemberAssembler()

    def jobs():
        dictionary = None
        for chunk, last in read_chunks(fd_in, block_size):
            yield chunk, dictionary, level, last
            if not independent:
                dictionary = bytes(chunk[-gz.DICTIONARY_SIZE:])

    for deflated in ordered_map(deflate_chunk, jobs(), executor):
        write(assembler.add(deflated))
    tail = assembler.finish()
    write(tail)
    return Totals(assembler.size, len(head) + assembler.compressed + 8, len(head) + 8)


class FormatError(Exception):
    """Corrupt input; `reason` is the tail of gzip's message (e.g. 'unexpected end of file')."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


NOT_GZIP = "not in gzip format"
UNEXPECTED_EOF = "unexpected end of file"
CRC_ERROR = "invalid compressed data--crc error"
LENGTH_ERROR = "invalid compressed data--length error"
FORMAT_VIOLATED = "invalid compressed data--format violated"
TRAILING_GARBAGE = "decompression OK, trailing garbage ignored"

READ_SIZE = 1 << 20
MAX_OUTPUT_PIECE = 1 << 20  # bounds memory however well the data compresses


class _Input:
    """Buffered reads from a descriptor with look-ahead, for member-by-member parsing."""

    def __init__(self, fd: int):
        self.reader = ReadAhead(fd, READ_SIZE)
        self.buffer = b""
        self.eof = False
        self.consumed = 0

    def fill(self, n: int) -> bool:
        """Try to hold at least `n` bytes; False at end of input with fewer."""
        while len(self.buffer) < n and not self.eof:
            data = self.reader.read()
            if data:
                self.buffer = self.buffer + data if self.buffer else data
            else:
                self.eof = True
        return len(self.buffer) >= n

    def take(self, n: int) -> bytes:
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        self.consumed += len(out)
        return out

    def give_back(self, data: bytes) -> None:
        if data:
            self.buffer = data + self.buffer
            self.consumed -= len(data)

    def rest_is_zeros(self) -> bool:
        while True:
            if self.buffer.strip(b"\0"):
                return False
            self.take(len(self.buffer))
            if not self.fill(1):
                return True


def decompress_stream(fd_in: int, write) -> tuple[Totals, str | None]:
    """Decompress every member from `fd_in` to `write`; return totals and a warning, if any.

    Raises FormatError with gzip's wording for input that is not gzip or is damaged.
    """
    source = _Input(fd_in)
    try:
        return _decompress_members(source, write)
    finally:
        source.reader.close()


def _decompress_members(source: _Input, write) -> tuple[Totals, str | None]:
    from isal import isal_zlib

    totals = Totals()
    members = 0
    while True:
        if not source.fill(1):
            if members == 0:
                raise FormatError(UNEXPECTED_EOF)
            return totals, None
        if members and source.buffer[:1] == b"\0":
            if source.rest_is_zeros():
                return totals, None
            return totals, TRAILING_GARBAGE
        while True:
            try:
                header = gz.parse_header(source.buffer)
                break
            except gz.Truncated:
                if not source.fill(len(source.buffer) + 1):
                    raise FormatError(UNEXPECTED_EOF) from None
            except gz.NotGzip:
                if members == 0:
                    raise FormatError(NOT_GZIP) from None
                return totals, TRAILING_GARBAGE
            except gz.UnknownMethod as error:
                raise FormatError(f"unknown method {error.method} -- not supported") from None
        source.take(header.length)
        inflater = isal_zlib.decompressobj(-15)
        crc = size = 0
        pending = b""
        while not inflater.eof:
            if not pending:
                if not source.fill(1):
                    raise FormatError(UNEXPECTED_EOF)
                pending = source.take(len(source.buffer))
            try:
                out = inflater.decompress(pending, MAX_OUTPUT_PIECE)
            except isal_zlib.error:
                raise FormatError(FORMAT_VIOLATED) from None
            pending = inflater.unconsumed_tail
            if out:
                crc = isal_zlib.crc32(out, crc)
                size += len(out)
                write(out)
        source.give_back(inflater.unused_data + pending)
        if not source.fill(8):
            raise FormatError(UNEXPECTED_EOF)
        expected_crc, expected_size = struct.unpack("<II", source.take(8))
        if expected_crc != crc:
            raise FormatError(CRC_ERROR)
        if expected_size != size & 0xFFFFFFFF:
            raise FormatError(LENGTH_ERROR)
        totals.bytes_out += size
        members += 1
        totals.bytes_in = source.consumed
