"""gzip decompression as a job: every member of a stream, inflated in order, checked against
its trailer, with gzip's rules for what may follow the last member.  fgzip's own chunked
members (octoray.jobs.gunzip_parallel) and runs of BGZF members (octoray.jobs.gunzip_bgzf)
decode on the engine's workers; everything else here, member by member.

Faults are the types of octoray.formats.faults: raised where gzip stops with an error,
returned (with the totals) where gzip warns or keeps what it wrote.
"""

from __future__ import annotations

import os

from octoray.formats import bgzf, faults
from octoray.formats import gzip as gz
from octoray.jobs.gzip import Totals
from octoray.streams import read_full_bytes

READ_SIZE = 1 << 20
MAX_OUTPUT_PIECE = 1 << 20  # bounds memory however well the data compresses
FIRST_PIECE = 16 << 10  # a member's first input piece, doubling: a small member's rest comes back small
FIRST_OUTPUT = 64 << 10  # its first output piece, doubling: the inflater allocates what it may write


class _Input:
    """Buffered reads from a descriptor with look-ahead, for member-by-member parsing.

    Plain reads on this thread (docs/design.md: a read-ahead thread cost more than it
    saved), each waiting for a whole READ_SIZE or the end: a pipe's odd-sized pieces made
    the inflater's outputs odd-sized too, and glibc's heap grew with the stream.  What was
    taken is skipped by a position, not cut off, so that a stream of small members does not
    copy the rest of a 1 MiB read for each one; `buffer` (the bytes not taken) cuts only
    when asked for, and `view` never."""

    def __init__(self, fd: int):
        self.fd = fd
        self._data = b""
        self._pos = 0  # _data[:_pos] is taken
        self.eof = False
        self.consumed = 0

    @property
    def buffer(self) -> bytes:
        if self._pos:
            self._data, self._pos = self._data[self._pos:], 0
        return self._data

    @buffer.setter
    def buffer(self, value: bytes) -> None:
        self._data, self._pos = value, 0

    def view(self) -> memoryview:
        return memoryview(self._data)[self._pos:]

    def available(self) -> int:
        return len(self._data) - self._pos

    def _append(self, data: bytes) -> None:
        self._data, self._pos = (self.buffer + data if self.available() else data), 0

    def fill(self, n: int) -> bool:
        """Try to hold at least `n` bytes; False at end of input with fewer."""
        while self.available() < n and not self.eof:
            data = read_full_bytes(self.fd, READ_SIZE)
            if data:
                self._append(data)
            else:
                self.eof = True
        return self.available() >= n

    def take(self, n: int) -> bytes:
        if self._pos == 0 and n >= len(self._data):  # all of it: the bytes themselves
            out, self._data = self._data, b""
        else:
            out = self._data[self._pos:self._pos + n]
            self._pos += len(out)
        self.consumed += len(out)
        return out

    def give_back(self, data: bytes) -> None:
        if not data:
            return
        start = self._pos - len(data)
        if start >= 0 and self._data.startswith(data, start):  # what was just taken: no copy
            self._pos = start
        else:
            self._data, self._pos = data + self.buffer, 0
        self.consumed -= len(data)

    def rest_is_zeros(self) -> bool:
        while True:
            if self.buffer.strip(b"\0"):
                return False
            self.take(self.available())
            if not self.fill(1):
                return True

    def copy_rest(self, write) -> int:
        copied = 0
        while self.fill(1):
            piece = self.take(self.available())
            copied += len(piece)
            write(piece)
        return copied


class _Peek(_Input):
    """An _Input that reads with pread from the file's start: the offset does not move."""

    def fill(self, n: int) -> bool:
        while self.available() < n and not self.eof:
            data = os.pread(self.fd, READ_SIZE, self.consumed + self.available())
            if data:
                self._append(data)
            else:
                self.eof = True
        return self.available() >= n


def first_header_fault(fd: int) -> faults.Fault | None:
    """The fault the first member's header would raise, read without moving the file's offset
    (gzip reads a file's header before it looks at the output's name: "not in gzip format"
    comes before "already exists").  None where a gzip header, or another format's start, is."""
    source = _Peek(fd)
    try:
        if not source.fill(1):
            raise faults.UnexpectedEnd
        if source.buffer[:2] != gz.MAGIC:
            from octoray.jobs import foreign

            if foreign.identify(source.buffer, first=True):
                return None
        _next_header(source, Totals(), passthrough=False, forced=False)
    except faults.Fault as fault:
        return fault
    return None


def decompress_stream(fd_in: int, write, *, passthrough: bool = False, forced: bool = False, on_header=None,
                      on_extra=None, executor=None) -> tuple[Totals, faults.Notice | faults.HeaderFault | None]:
    """Decompress every member from `fd_in` to `write`; return the totals and what gzip would
    say after the data: None, a Notice (trailing data), or a later member's HeaderFault.

    With `passthrough` (gzip -cdf), data that is not gzip is copied to `write` unchanged.
    `forced` (gzip -lf; implied by `passthrough`): gzip's -f with output to stdout reads the
    magic leniently, so an input shorter than it is "not in gzip format", not cut off.
    `on_header` is called once the first header is read (gzip -v names the file then), and
    `on_extra(length)` for each member whose extra field is not octoray's (gzip -v notes it).
    `executor`, a callable, opens the executor that decodes members of independent chunks
    (octoray.formats.gzip_chunks) in parallel; it is called only when one is met.
    Raises a faults.Fault, its ``totals`` set, for input gzip rejects.
    """
    source = _Input(fd_in)
    totals = Totals()
    joined = _Joined(write)
    try:
        outcome = _decompress_members(source, joined, totals, passthrough, forced or passthrough, on_header,
                                      on_extra, executor)
        totals.bytes_in = source.consumed + source.available()
        return totals, outcome
    except faults.Fault as failure:
        failure.totals = totals  # what came before the fault (gzip -l's figures)
        raise
    finally:
        joined.flush()  # what was decoded before a fault is written before it is reported, as gzip does


JOINED = 256 << 10


class _Joined:
    """Small members' outputs joined into pieces of about JOINED bytes before they are written:
    a stream of thousands of small members (logs appended to one file) made a write, and a
    handoff to the writer thread, for each.  `raw` is the writer itself, after the pieces held:
    for the paths that write large pieces (or in place, octoray.streams.in_place)."""

    def __init__(self, write):
        self._write, self._pieces, self._size = write, [], 0

    def __call__(self, data: bytes) -> None:
        if len(data) >= JOINED:
            self.raw()(data)
            return
        self._pieces.append(data)
        self._size += len(data)
        if self._size >= JOINED:
            self.flush()

    def flush(self) -> None:
        if self._pieces:
            data = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
            self._pieces, self._size = [], 0
            self._write(data)

    def raw(self):
        self.flush()
        return self._write


def _decompress_members(source: _Input, write: _Joined, totals: Totals, passthrough: bool, forced: bool,
                        on_header, on_extra, executor) -> faults.Notice | faults.HeaderFault | None:
    while True:
        if not source.fill(1):
            if totals.members == 0:
                if not passthrough:
                    raise faults.NotCompressed if forced else faults.UnexpectedEnd
                if on_header is not None:
                    on_header()  # gzip -cdfv names even an empty file
                totals.copied = True
            return None
        totals.more = totals.members > 0
        if totals.members and source.view()[:1] == b"\0" and not passthrough:
            return faults.TrailingZeros() if source.rest_is_zeros() else faults.TrailingGarbage()
        if source.view()[:2] != gz.MAGIC:  # LZW, pack, zip or zlib, as gzip and pigz read them
            from octoray.jobs import foreign

            kind = foreign.identify(source.buffer, first=totals.members == 0)
            decoded = kind and foreign.decode_member(kind, source, write.raw(), totals, on_header, passthrough)
            if decoded:
                last, outcome = decoded
                if last:
                    return outcome
                continue
        header = _next_header(source, totals, passthrough, forced)
        if header is None:
            if passthrough:
                if totals.members == 0 and on_header is not None:
                    on_header()  # gzip names the file before it copies, as before a member
                totals.copied = True
                totals.copied_bytes = source.copy_rest(write.raw())
                return None
            return faults.TrailingGarbage()
        if isinstance(header, faults.HeaderFault):
            return header  # a fault in a later member's header
        if executor is not None and on_extra is None and bgzf.member_size(source.view()) is not None:
            _first_header(totals, header, on_header)
            from octoray.jobs.gunzip_bgzf import inflate_run

            if inflate_run(source, write.raw(), totals, executor(), _count_member):
                continue  # else its first member is damaged: decoded below, as gzip reports it
        head = source.take(header.length)
        if on_extra is not None and header.flags & gz.FLAG_EXTRA:
            _note_extra(head, on_extra)
        _first_header(totals, header, on_header)
        totals.mtime = header.mtime or totals.mtime
        layout = _parallel_layout(head, header, executor)
        if layout is not None:
            _inflate_chunked(source, layout, write.raw(), totals, executor())
        else:
            _inflate_member(source, write, totals)


def _first_header(totals: Totals, header: gz.MemberHeader, on_header) -> None:
    if totals.first_header is None:
        totals.first_header = header
        if on_header is not None:
            on_header()


def _next_header(source: _Input, totals: Totals, passthrough: bool, forced: bool):
    """The next member's header; None where the data is not gzip (after a member, or under
    -cdf); a later member's HeaderFault.  The first member's faults are raised."""
    while True:
        view = source.view()  # no copy of the rest of the read for each member's header
        fault = gz.header_start_fault(view) if view[:2] == gz.MAGIC else None
        try:
            if fault is None:
                header = gz.parse_header(view)
                fault = gz.header_crc_fault(view, header)
        except gz.Truncated:
            if not source.fill(source.available() + 1):
                if passthrough and source.available() < 2:
                    return None
                raise faults.UnexpectedEnd from None
            continue
        except faults.NotCompressed:
            if passthrough:
                return None
            if totals.members == 0:
                if not source.fill(2) and not forced:  # one byte: gzip hits the end reading the magic
                    raise faults.UnexpectedEnd from None
                raise
            if not source.fill(2):  # gzip reads a lone stray byte as a cut-off magic
                raise faults.UnexpectedEnd from None
            return None
        except faults.UnknownMethod as error:  # header_start_fault sees it first
            fault = error
        if fault is None:
            return header
        if totals.members == 0:
            raise fault
        return fault


def _note_extra(head: bytes, on_extra) -> None:
    """gzip -v says it ignores a member's extra field; octoray's own (the chunk layout) it reads."""
    from octoray.formats.gzip_chunks import extra_field, parse_layout

    if parse_layout(head) is None:
        on_extra(len(extra_field(head)))


def _parallel_layout(head: bytes, header: gz.MemberHeader, executor):
    """The member's chunk layout where it is worth decoding in parallel, else None."""
    if executor is None or not header.flags & gz.FLAG_EXTRA:
        return None
    from octoray.formats.gzip_chunks import parse_layout
    from octoray.jobs.gunzip_parallel import can_decode

    layout = parse_layout(head)
    if layout is None or len(layout.sizes) == 1:  # one chunk: nothing to share out
        return None
    return layout if can_decode(layout, executor()) else None


def _inflate_chunked(source: _Input, layout, write, totals: Totals, executor) -> None:
    """Inflate a member of independent chunks on the executor's workers, in order."""
    from octoray.jobs.gunzip_parallel import inflate_member
    from octoray.streams import in_place

    def pieces():
        while source.fill(1):
            yield source.take(source.available())

    inflated = inflate_member(layout, pieces(), in_place(write), executor)  # this thread only collects
    source.give_back(inflated.unused)
    _count_member(totals, inflated.crc, inflated.size)


def _count_member(totals: Totals, crc: int, size: int) -> None:
    totals.bytes_out += size
    totals.members += 1
    totals.last_crc, totals.last_size = crc, size  # counted, not ISIZE's 32 bits: gzip -l shows 5 GiB as such


def _inflate_member(source: _Input, write, totals: Totals) -> None:
    """Inflate one member's deflate stream.  ISA-L's IgzipDecompressor keeps the input it has
    not used yet, so no unconsumed tail is copied back and forth."""
    from isal import igzip_lib, isal_zlib

    inflater = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_DEFLATE, zdict=gz.GZIP_START_WINDOW)
    crc = size = 0
    limit, most = FIRST_PIECE, FIRST_OUTPUT
    while not inflater.eof:
        piece = b""
        if inflater.needs_input:
            if not source.fill(1):
                raise faults.UnexpectedEnd
            piece = source.take(min(source.available(), limit))
            limit = min(2 * limit, READ_SIZE)
        try:
            out = inflater.decompress(piece, most)
            most = min(2 * most, MAX_OUTPUT_PIECE)
        except igzip_lib.IsalError:
            raise faults.CorruptData from None
        if out:
            crc = isal_zlib.crc32(out, crc)
            size += len(out)
            write(out)
    source.give_back(inflater.unused_data)
    if not source.fill(8):
        raise faults.UnexpectedEnd
    gz.check_trailer(source.take(8), crc, size)
    _count_member(totals, crc, size)
