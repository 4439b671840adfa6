"""gzip jobs: compress a stream in parallel chunks into one member; decompress members.

These functions know the format and the engine, not the command line: the CLI hands them
file descriptors and options and maps their exceptions to gzip's messages.
"""

from __future__ import annotations

import os
import struct

from octoray.engine.stream import ordered_map
from octoray.formats import gzip as gz
from octoray.streams import read_chunks, read_full, read_full_bytes

DEFAULT_BLOCK_SIZE = 1 << 20  # 1 MiB: larger chunks unbalance two threads, smaller cost ratio


class Totals:
    """What a job read and wrote, and what gzip -l and -v report about it."""

    def __init__(self, bytes_in: int = 0, bytes_out: int = 0, overhead: int = 0):
        self.bytes_in, self.bytes_out = bytes_in, bytes_out
        self.overhead = overhead  # header and trailer bytes, which gzip leaves out of its ratio
        self.members = 0
        self.first_header: gz.MemberHeader | None = None
        self.last_crc = self.last_size = 0  # the last member's trailer, as gzip -l shows it
        self.copied = False  # -cdf passed data through unchanged
        self.copied_bytes = 0  # how many
        self.more = False  # input followed the first member (gzip then counts no header bytes)

    def ratio_saved(self) -> float:
        """Percentage gzip -v prints: the share of the input that deflate saved."""
        compressed = self.bytes_out - self.overhead
        return 100.0 * (self.bytes_in - compressed) / self.bytes_in if self.bytes_in else 0.0


# --- compression --------------------------------------------------------------------------

STRATEGIES = {"huffman": 2, "rle": 3}  # zlib's Z_HUFFMAN_ONLY and Z_RLE
RSYNC_WINDOW = 4096  # bytes the rolling sum covers, as gzip's --rsyncable


def deflate_zlib_chunk(data, dictionary: bytes | None, level: int, last: bool, strategy: int):
    """pigz -H / -U: zlib with a strategy (the fast kernels have none), byte-aligned unless last."""
    import zlib

    options = {"zdict": dictionary} if dictionary else {}
    compressor = zlib.compressobj(min(level, 9), zlib.DEFLATED, -15, 9, strategy, **options)
    out = compressor.compress(data) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    return gz.DeflatedChunk(out, gz.crc32(data), len(data), last)


def deflate_best_chunk(data, _dictionary, _level, last: bool):
    """pigz -11: libdeflate's strongest level (12) stands in for zopfli."""
    import deflate

    complete = deflate.deflate_compress(bytes(data), 12)
    if not last:
        from octoray.formats.deflate_join import unfinish

        complete = unfinish(complete)
    return gz.DeflatedChunk(complete, gz.crc32(data), len(data), last)


def _task(level: int, strategy: str | None):
    if strategy:
        return deflate_zlib_chunk, (STRATEGIES[strategy],)
    if level == 11:
        return deflate_best_chunk, ()
    from octoray.kernels.tasks import deflate_chunk

    return deflate_chunk, ()


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
                    independent: bool = False, name: bytes | None = None, mtime: int = 0,
                    comment: bytes | None = None, strategy: str | None = None, rsyncable: bool = False,
                    wrapper: Wrapper | None = None) -> Totals:
    """Compress everything readable from `fd_in` into one gzip member passed to `write`."""
    wrapper = wrapper or Wrapper(name=name, mtime=mtime, level=level, comment=comment)
    task, extra = _task(level, strategy)
    kernel_level = 9 if level == 11 else level
    head = wrapper.header()
    write(head)
    assembler = gz.MemberAssembler()
    chunks = _worker_read_chunks(fd_in, block_size, executor, rsyncable, wrapper)
    if chunks is None:
        chunks = rsyncable_chunks(fd_in, block_size) if rsyncable else read_chunks(fd_in, block_size)

    def jobs():
        dictionary = None
        for chunk, last in chunks:
            wrapper.track(chunk)
            yield (chunk, dictionary, kernel_level, last, *extra)
            if not independent:
                tail = chunk[-gz.DICTIONARY_SIZE:]
                dictionary = tail if hasattr(tail, "identity") else bytes(tail)  # a file range stays one

    for deflated in ordered_map(task, jobs(), executor):
        write(assembler.add(deflated))
    end = assembler.finish_stream()
    write(end)
    tail = wrapper.trailer(assembler.crc, assembler.size, assembler.compressed, len(head))
    write(tail)
    return Totals(assembler.size, len(head) + assembler.compressed + len(tail), len(head) + len(tail))


def _worker_read_chunks(fd_in: int, block_size: int, executor, rsyncable: bool, wrapper: Wrapper):
    """Byte ranges instead of bytes where the executor's workers read the input file
    themselves (a cluster sharing this host's files); None: read here and ship the bytes.
    --rsyncable cuts by content and zlib's trailer sums every byte here: both read here."""
    offer = getattr(executor, "file_chunks", None)
    if offer is None or rsyncable or wrapper.kind == "zlib":
        return None
    return offer(fd_in, block_size)


# --- decompression ------------------------------------------------------------------------

class FormatError(Exception):
    """Corrupt input; `reason` is the tail of gzip's message (e.g. 'unexpected end of file')."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
        self.totals: Totals | None = None


NOT_GZIP = "not in gzip format"
UNEXPECTED_EOF = "unexpected end of file"
CRC_ERROR = "invalid compressed data--crc error"
LENGTH_ERROR = "invalid compressed data--length error"
FORMAT_VIOLATED = "invalid compressed data--format violated"
TRAILING_GARBAGE = "decompression OK, trailing garbage ignored"
TRAILING_ZEROS = "decompression OK, trailing zero bytes ignored"  # gzip says so under -v only
TRAILING = (TRAILING_GARBAGE, TRAILING_ZEROS)  # the warnings; any other reason returned is an error
# Faults gzip finds in a header (printed without the leading newline).  In a member after the
# first, gzip reports them and stops, but keeps what it wrote: they are returned, not raised.
ENCRYPTED = "is encrypted -- not supported"
FLAG_RESERVED = 0xC0
FLAG_ENCRYPTED = 0x20


def header_fault(buf) -> str | None:
    """gzip's complaint about a header that starts with the gzip magic, as soon as the bytes
    it needs are there: the method (byte 2), then the flags (byte 3)."""
    if len(buf) >= 3 and buf[2] != gz.METHOD_DEFLATE:
        return f"unknown method {buf[2]} -- not supported"
    if len(buf) >= 4:
        flags = buf[3]
        if flags & FLAG_ENCRYPTED:
            return ENCRYPTED
        if flags & FLAG_RESERVED:
            return f"has flags 0x{flags:x} -- not supported"
    return None


def header_crc_fault(buf, header) -> str | None:
    """A stored header CRC (FHCRC) that does not match the header."""
    if not header.flags & gz.FLAG_HCRC:
        return None
    stored = int.from_bytes(bytes(buf[header.length - 2:header.length]), "little")
    computed = gz.crc32(bytes(buf[:header.length - 2])) & 0xFFFF
    if stored != computed:
        return f"header checksum 0x{stored:04x} != computed checksum 0x{computed:04x}"
    return None

READ_SIZE = 1 << 20
MAX_OUTPUT_PIECE = 1 << 20  # bounds memory however well the data compresses


class _Input:
    """Buffered reads from a descriptor with look-ahead, for member-by-member parsing.

    Plain reads on this thread: compressed input is a fraction of the output, the kernel
    reads ahead on files and the writer of a pipe runs on its own; a read-ahead thread
    cost more than it saved (measured: 0.525 against 0.495 s on 224 MB of gzip -6 data).
    Each read waits for a full READ_SIZE (or the end): fed a pipe's odd-sized pieces, the
    inflater returned odd-sized outputs, and glibc's heap grew with the stream (fgzip -1 |
    fgzip -d: 53 MiB after 1 GB, 130 MiB after 3 GB; 21 and 34 MiB with full reads)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buffer = b""
        self.eof = False
        self.consumed = 0

    def fill(self, n: int) -> bool:
        """Try to hold at least `n` bytes; False at end of input with fewer."""
        while len(self.buffer) < n and not self.eof:
            data = read_full_bytes(self.fd, READ_SIZE)
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

    def copy_rest(self, write) -> int:
        copied = 0
        while self.fill(1):
            piece = self.take(len(self.buffer))
            copied += len(piece)
            write(piece)
        return copied


def decompress_stream(fd_in: int, write, *, passthrough: bool = False, on_header=None) -> tuple[Totals, str | None]:
    """Decompress every member from `fd_in` to `write`; return totals and a warning, if any.

    With `passthrough` (gzip -cdf), data that is not gzip is copied to `write` unchanged.
    `on_header` is called once the first header is read (gzip -v names the file then).
    Raises FormatError with gzip's wording for input that is not gzip or is damaged.
    """
    source = _Input(fd_in)
    totals = Totals()
    try:
        warning = _decompress_members(source, write, totals, passthrough, on_header)
        totals.bytes_in = source.consumed + len(source.buffer)
        return totals, warning
    except FormatError as failure:
        failure.totals = totals  # what came before the fault (gzip -l's figures)
        raise


def _decompress_members(source: _Input, write, totals: Totals, passthrough: bool, on_header) -> str | None:
    while True:
        if not source.fill(1):
            if totals.members == 0:
                if not passthrough:
                    raise FormatError(UNEXPECTED_EOF)
                if on_header is not None:
                    on_header()  # gzip -cdfv names even an empty file
                totals.copied = True
            return None
        totals.more = totals.members > 0
        if totals.members and source.buffer[:1] == b"\0" and not passthrough:
            return TRAILING_ZEROS if source.rest_is_zeros() else TRAILING_GARBAGE
        header = _next_header(source, totals, passthrough)
        if header is None:
            if passthrough:
                if totals.members == 0 and on_header is not None:
                    on_header()  # gzip names the file before it copies, as before a member
                totals.copied = True
                totals.copied_bytes = source.copy_rest(write)
                return None
            return TRAILING_GARBAGE
        if isinstance(header, str):
            return header  # a fault in a later member's header
        if totals.first_header is None:
            totals.first_header = header
            if on_header is not None:
                on_header()
        source.take(header.length)
        _inflate_member(source, write, totals)


def _next_header(source: _Input, totals: Totals, passthrough: bool):
    """The next member's header, or None where the data is not gzip (after a member, or -cdf),
    or the reason a later member's header is refused."""
    while True:
        fault = header_fault(source.buffer) if source.buffer[:2] == gz.MAGIC else None
        try:
            if fault is None:
                header = gz.parse_header(source.buffer)
                fault = header_crc_fault(source.buffer, header)
        except gz.Truncated:
            if not source.fill(len(source.buffer) + 1):
                if passthrough and len(source.buffer) < 2:
                    return None
                raise FormatError(UNEXPECTED_EOF) from None
            continue
        except gz.NotGzip:
            if passthrough:
                return None
            if totals.members == 0:
                if not source.fill(2):  # one byte: gzip hits the end reading the magic
                    raise FormatError(UNEXPECTED_EOF) from None
                raise FormatError(NOT_GZIP) from None
            if not source.fill(2):  # gzip reads a lone stray byte as a cut-off magic
                raise FormatError(UNEXPECTED_EOF) from None
            return None
        except gz.UnknownMethod as error:  # header_fault sees it first; kept for safety
            fault = f"unknown method {error.method} -- not supported"
        if fault is None:
            return header
        if totals.members == 0:
            raise FormatError(fault)
        return fault


def _inflate_member(source: _Input, write, totals: Totals) -> None:
    """Inflate one member's deflate stream.  ISA-L's IgzipDecompressor keeps the input it has
    not used yet, so no unconsumed tail is copied back and forth (25 % faster, measured)."""
    from isal import igzip_lib, isal_zlib

    inflater = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_DEFLATE)
    crc = size = 0
    while not inflater.eof:
        piece = b""
        if inflater.needs_input:
            if not source.fill(1):
                raise FormatError(UNEXPECTED_EOF)
            piece = source.take(len(source.buffer))
        try:
            out = inflater.decompress(piece, MAX_OUTPUT_PIECE)
        except igzip_lib.IsalError:
            raise FormatError(FORMAT_VIOLATED) from None
        if out:
            crc = isal_zlib.crc32(out, crc)
            size += len(out)
            write(out)
    source.give_back(inflater.unused_data)
    if not source.fill(8):
        raise FormatError(UNEXPECTED_EOF)
    expected_crc, expected_size = struct.unpack("<II", source.take(8))
    if expected_crc != crc:
        raise FormatError(CRC_ERROR)
    if expected_size != size & 0xFFFFFFFF:
        raise FormatError(LENGTH_ERROR)
    totals.bytes_out += size
    totals.members += 1
    totals.last_crc, totals.last_size = crc, expected_size
