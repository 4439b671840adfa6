"""gzip compression as a job: a stream cut into chunks, deflated in parallel, joined in
order into one member (gzip, zlib or a one-entry zip around one deflate stream).

Chunks are compressed independently (no dictionary carried from one to the next: at every
level the size stays within 1 % of gzip's, docs/design.md), so a gzip member of several chunks
announces them in its header (octoray.formats.gzip_chunks) and fgzip -d decodes it on every
core; gzip, pigz and zlib read it as any other member.

The job knows the format and the engine, not the command line: the CLI hands it file
descriptors and what the options asked for.  Decompression is octoray.jobs.gunzip.
"""

from __future__ import annotations

import struct

from octoray.engine.stream import ordered_map
from octoray.formats import gzip as gz
from octoray.jobs import DEFAULT_BLOCK_SIZE
from octoray.streams import read_chunks, read_full



class Totals:
    """What a job read and wrote, and what gzip -l and -v report about it."""

    def __init__(self, bytes_in: int = 0, bytes_out: int = 0, overhead: int = 0):
        self.bytes_in, self.bytes_out = bytes_in, bytes_out
        self.overhead = overhead  # header and trailer bytes, which gzip leaves out of its ratio
        self.members = 0
        self.first_header: gz.MemberHeader | None = None
        self.mtime = 0  # the last member's MTIME that is not 0, which gzip -dN gives the output
        self.last_crc = self.last_size = 0  # the last member's trailer, as gzip -l shows it (crc None: unknown)
        self.copied = False  # -cdf passed data through unchanged
        self.copied_bytes = 0  # how many
        self.more = False  # input followed the first member (gzip then counts no header bytes)
        self.chunk_index: tuple[int, bytes] | None = None  # (offset in the member, bytes) left to write there
        self.last_method = "defla"  # gzip -lv's method when last_crc is None (another format last)
        self.warnings: list = []  # notices gzip prints before the data (reserved LZW flags)


RSYNC_WINDOW = 4096  # bytes the rolling sum covers, as gzip's --rsyncable


def rsyncable_chunks(fd_in: int, block_size: int):
    """(chunk, is_last) pairs cut where a rolling sum over the last 4 KiB hits a pattern, so
    chunk edges depend on the content near them only: an edit changes the chunks around it,
    and the compressed output after them is the same again (rsync sends little)."""
    import numpy as np

    gear = np.random.default_rng(0x6F63746F).integers(0, 1 << 32, 256, dtype=np.uint64)
    mask = np.uint64((1 << max(block_size.bit_length() - 1, 12)) - 1)
    history = np.zeros(RSYNC_WINDOW, dtype=np.uint64)  # gear values of the last 4 KiB read
    pending, previous = bytearray(), None
    while True:
        piece = read_full(fd_in, 1 << 20)
        if not piece:
            break
        values = np.concatenate((history, gear[np.frombuffer(piece, dtype=np.uint8)]))
        sums = np.cumsum(values, dtype=np.uint64)
        window = sums[RSYNC_WINDOW:] - sums[:-RSYNC_WINDOW]
        cuts = (np.flatnonzero((window & mask) == 0) + 1).tolist()
        history = values[-RSYNC_WINDOW:]
        start = 0
        for cut in [*cuts, None]:
            end = len(piece) if cut is None else cut
            pending += piece[start:end]
            start = end
            while len(pending) >= 4 * block_size:  # no trigger for long: cut anyway
                if previous is not None:
                    yield previous, False
                previous, pending = bytes(pending[:4 * block_size]), pending[4 * block_size:]
            if cut is not None and pending:
                if previous is not None:
                    yield previous, False
                previous, pending = bytes(pending), bytearray()
    if pending:
        if previous is not None:
            yield previous, False
        previous = bytes(pending)
    if previous is not None:
        yield previous, True


class Wrapper:
    """The container around the deflate stream: gzip (RFC 1952), zlib (RFC 1950) or a
    one-entry zip, as pigz writes them."""

    def __init__(self, kind: str = "gzip", *, name: bytes | None = None, mtime: int = 0, level: int = 6,
                 comment: bytes | None = None, mode: int = 0o644):
        self.kind, self.name, self.mtime, self.level = kind, name, mtime, level
        self.comment, self.mode = comment, mode
        self.adler = 1

    def header(self) -> bytes:
        if self.kind == "zlib":
            return gz.zlib_header(self.level)
        if self.kind == "zip":
            return gz.zip_local_header(self.name or b"-", self.mtime)
        return gz.header(self.name, self.mtime, self.level, self.comment)

    def track(self, chunk) -> None:
        if self.kind == "zlib":
            from isal import isal_zlib

            self.adler = isal_zlib.adler32(chunk, self.adler)

    def trailer(self, crc: int, size: int, compressed: int, header_size: int) -> bytes:
        if self.kind == "zlib":
            return struct.pack(">I", self.adler & 0xFFFFFFFF)
        if self.kind == "zip":
            return gz.zip_trailer(self.name or b"-", self.mtime, crc, compressed, size, header_size,
                                  self.mode, self.comment)
        return gz.trailer(crc, size)


def compress_stream(fd_in: int, write, executor, *, level: int = 6, block_size: int = DEFAULT_BLOCK_SIZE,
                    strategy: str | None = None, rsyncable: bool = False,
                    wrapper: Wrapper | None = None, index: bool = False) -> Totals:
    """Compress everything readable from `fd_in` into one member (a gzip member unless
    `wrapper` says otherwise) passed to `write`.  `level` 0-9 or 11 and `strategy` (None,
    "huffman", "rle") go to the accelerator's deflate as they are.

    With `index`, the caller can write into the output afterwards: a member of independent
    chunks then reserves an index in its header, and the returned Totals' `chunk_index` holds what
    to write there (offset from the member's first byte, bytes)."""
    from octoray.kernels.tasks import deflate_chunk

    wrapper = wrapper or Wrapper(level=level)
    chunked = _ChunkedHeader(wrapper, fd_in, block_size, rsyncable, index) if wrapper.kind == "gzip" else None
    assembler = gz.MemberAssembler()
    chunks = _worker_read_chunks(fd_in, block_size, executor, rsyncable, wrapper)
    if chunks is None:
        chunks = rsyncable_chunks(fd_in, block_size) if rsyncable else read_chunks(fd_in, block_size)

    def jobs():
        for chunk, last in chunks:
            wrapper.track(chunk)
            yield (chunk, level, last, strategy)

    head, sizes = None, []
    for deflated in ordered_map(deflate_chunk, jobs(), executor):
        if head is None:  # one chunk has nothing to decode in parallel: a plain header, as gzip's
            chunked = None if deflated.last else chunked
            head = chunked.head if chunked else wrapper.header()
            write(head)
        write(assembler.add(deflated))
        sizes.append(len(deflated.data))
    if head is None:  # no input
        head, chunked = wrapper.header(), None
        write(head)
    end = assembler.finish_stream()
    write(end)
    tail = wrapper.trailer(assembler.crc, assembler.size, assembler.compressed, len(head))
    write(tail)
    totals = Totals(assembler.size, len(head) + assembler.compressed + len(tail), len(head) + len(tail))
    if chunked is not None:
        totals.chunk_index = chunked.index(sizes + [len(end)] if end else sizes)
    return totals


class _ChunkedHeader:
    """The header of a member of independent chunks, with room for their index where the
    input's size is known and the caller can write the index into the output afterwards."""

    def __init__(self, wrapper: Wrapper, fd_in: int, block_size: int, rsyncable: bool, index: bool):
        import os
        import stat

        from octoray.formats import gzip_chunks

        st = os.fstat(fd_in)
        size = st.st_size if index and stat.S_ISREG(st.st_mode) else None
        # --rsyncable cuts where the content says, at most 4 blocks apart
        chunk_size = 4 * block_size if rsyncable else block_size
        self.slots = gzip_chunks.index_slots(size, chunk_size)
        self.head, self.at = gzip_chunks.header(wrapper.name, wrapper.mtime, wrapper.level, wrapper.comment,
                                                chunk_size=chunk_size, slots=self.slots, variable=rsyncable)

    def index(self, sizes: list[int]) -> tuple[int, bytes] | None:
        from octoray.formats import gzip_chunks

        return (self.at, gzip_chunks.index_bytes(sizes, self.slots)) if self.slots else None


def _worker_read_chunks(fd_in: int, block_size: int, executor, rsyncable: bool, wrapper: Wrapper):
    """Byte ranges instead of bytes where the executor's workers read the input file
    themselves (a cluster sharing this host's files); None: read here and ship the bytes.
    --rsyncable cuts by content and zlib's trailer sums every byte here: both read here."""
    offer = getattr(executor, "file_chunks", None)
    if offer is None or rsyncable or wrapper.kind == "zlib":
        return None
    return offer(fd_in, block_size)
