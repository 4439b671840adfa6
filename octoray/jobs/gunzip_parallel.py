"""Decode a chunked gzip member (octoray.formats.gzip_chunks) on every worker, in order.

The reader cuts the compressed stream at candidate chunk ends (the header's index, else the
markers found by scanning), workers decode and verify the chunks (octoray.formats.
chunk_inflate), and the results are written in input order through the engine's ordered map,
so memory stays bounded by its window.  A chunk whose end is not proved on its own is held
back until the next chunk verifies (or ISA-L proves it).  A chunk that fails verification
stops the run of speculation: the chunk is retried with the next candidate ends (a marker met
inside compressed data by chance), and where that fails too, the rest of the member is
decoded sequentially from the last proved boundary with the output's last 32 KiB as the
window: exactly what a sequential decoder does from there, damage reported in gzip's words.

`inflate_member` is the call for a decoder that has parsed the member's header itself;
`inflate_fd` decodes a stream that starts with a chunked member.
"""

from __future__ import annotations

from _collections import deque  # collections' own import costs fgzip -d a millisecond or two

from octoray.engine.stream import default_window, ordered_map
from octoray.formats import gzip as gz
from octoray.formats.chunk_inflate import inflate_chunk, inflate_chunk_isal
from octoray.formats.gzip_chunks import ChunkLayout, find_marker, max_compressed
from octoray.formats import faults

MAX_CHUNK_SIZE = 16 << 20
"""Larger announced chunks are decoded sequentially: the window holds several chunks' output."""
IN_FLIGHT = 64 << 20  # output the window may hold, where chunks are large
MERGE_TRIES = 4  # candidate ends tried for a chunk that failed, before decoding sequentially
BLOCK = 1 << 20
"""Input is kept in blocks of about this much: pieces under half of it are joined (a pipe's
small reads), larger ones kept as they come (the first, which the header was cut from)."""
MAX_OUTPUT_PIECE = 1 << 20


def can_decode(layout: ChunkLayout | None, executor) -> bool:
    """Whether a member with `layout` is worth decoding with `executor` in parallel."""
    return (layout is not None and layout.chunk_size <= MAX_CHUNK_SIZE
            and getattr(executor, "workers", 1) > 1)


class Inflated:
    """A member decoded: its output's CRC-32 and length (as in its trailer), the input read
    past the member's trailer, which the caller must treat as the next input, and how the
    work went: chunks decoded in parallel, and whether a sequential decode finished it."""

    __slots__ = ("crc", "size", "unused", "chunks", "sequential")

    def __init__(self, crc: int, size: int, unused: bytes, chunks: int = 0, sequential: bool = False):
        self.crc, self.size, self.unused = crc, size, unused
        self.chunks, self.sequential = chunks, sequential


def inflate_member(layout: ChunkLayout, pieces, write, executor) -> Inflated:
    """Decode one member's deflate stream and trailer, the header already consumed.

    `pieces` yields the input from the first byte after the header, in pieces of any size
    (b"" or the end of the iterator: end of input).  Output goes to `write`, in order.
    Raises the sequential decoder's faults (octoray.formats.faults): UnexpectedEnd, CorruptData,
    CrcMismatch, LengthMismatch; output written before the fault is what a sequential decode
    would have written before it, give or take the unwritten part of the damaged chunk.
    """
    return _MemberDecoder(layout, pieces, write, executor).run()


def inflate_fd(fd: int, write, executor, read_size: int = 1 << 20) -> Inflated:
    """Decode the chunked member at the start of the stream `fd` (its header included) to
    `write`; ValueError if the stream does not start with one.  The Inflated's `unused` holds
    what was read past the member; the rest of the stream is still in `fd`."""
    from octoray.formats.gzip_chunks import parse_layout
    from octoray.streams import read_full_bytes

    first = read_full_bytes(fd, read_size)
    try:
        header = gz.parse_header(first)
    except (gz.NotGzip, gz.Truncated, gz.UnknownMethod):
        header = None
    layout = parse_layout(first) if header else None
    if layout is None:
        raise ValueError("not a chunked gzip member")

    def pieces():
        yield first[header.length:]
        while piece := read_full_bytes(fd, read_size):
            yield piece

    return inflate_member(layout, pieces(), write, executor)


class _Compressed:
    """The member's input from the last proved boundary on, as immutable blocks (a chunk inside
    one block goes to a worker as a view, without a copy); offsets count from the member's
    first deflate byte."""

    def __init__(self, pieces):
        self._pieces = iter(pieces)
        self.blocks: deque = deque()  # (offset, bytes)
        self.end = 0  # offset just past the data read so far
        self.eof = False

    def more(self) -> bool:
        """Read at least half a BLOCK more (less at the end); False at the end of input."""
        parts, got = [], 0
        while got < BLOCK // 2 and not self.eof:
            piece = next(self._pieces, b"")
            if not piece:
                self.eof = True
            else:
                parts.append(piece)
                got += len(piece)
        if not got:
            return False
        block = parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)
        self.blocks.append((self.end, block))
        self.end += len(block)
        return True

    def ensure(self, end: int) -> bool:
        while self.end < end:
            if not self.more():
                return False
        return True

    def get(self, start: int, end: int, joined: bool = True):
        """Bytes [start, end), which must be held: one buffer, or where they lie across blocks
        and not `joined`, a list of views (octoray.formats.chunk_inflate takes either)."""
        pieces = []
        for offset, block in self.blocks:
            if offset + len(block) <= start:
                continue
            if offset >= end:
                break
            lo, hi = max(start - offset, 0), min(end - offset, len(block))
            if lo == 0 and hi == len(block) and not pieces and offset + hi >= end:
                return block
            pieces.append(memoryview(block)[lo:hi])
        return pieces[0] if len(pieces) == 1 else b"".join(pieces) if joined else pieces

    def release(self, before: int) -> None:
        while self.blocks and self.blocks[0][0] + len(self.blocks[0][1]) <= before:
            self.blocks.popleft()

    def find_marker(self, start: int, limit: int) -> int:
        """End of the first marker wholly inside [start, limit), reading as needed; -1 if none
        (or the input ends first)."""
        scanned = start
        while True:
            found = self._find_held(scanned, limit)
            if found > 0:
                return found
            held = self.end
            if held >= limit or not self.more():
                return -1
            scanned = max(start, held - 3)  # a marker may straddle the old end

    def _find_held(self, start: int, limit: int) -> int:
        blocks = list(self.blocks)
        for i, (offset, block) in enumerate(blocks):
            stop = offset + len(block)
            if stop <= start:
                continue
            if offset >= limit:
                break
            found = find_marker(block, max(start - offset, 0), min(limit - offset, len(block)))
            if found > 0:
                return offset + found
            if i + 1 < len(blocks) and stop < limit:  # a marker across the seam
                tail_from = max(start, stop - 3)
                seam = bytes(memoryview(block)[tail_from - offset:]) + blocks[i + 1][1][:3]
                found = find_marker(seam, 0, min(len(seam), limit - tail_from))
                if found > stop - tail_from:
                    return tail_from + found
        return -1

    def from_offset(self, start: int) -> bytes:
        """Everything held from `start` on."""
        return b"".join(memoryview(block)[max(start - offset, 0):] for offset, block in self.blocks
                        if offset + len(block) > start)


class _MemberDecoder:
    def __init__(self, layout: ChunkLayout, pieces, write, executor):
        self.layout, self.write, self.executor = layout, write, executor
        self.data = _Compressed(pieces)
        self.limit = max_compressed(layout.chunk_size)
        self.use_index = True
        self.verified = 0  # offset of the next chunk: a proved block boundary
        self.chunk = 0  # its number
        self.crc = self.size = 0
        self.tail = b""  # ends with the output's last 32 KiB: the window, should sequential decoding take over
        self.regions: deque = deque()
        self.failed_end: int | None = None  # where the chunk that failed was cut
        self.went_sequential = False
        self.held = None  # (chunk, its end): decoded, its end not proved yet, not written

    def run(self) -> Inflated:
        while self._parallel() != "end":
            outcome = self._retry()
            if outcome == "end":
                break
            if outcome == "failed":
                self._sequential()
                self.went_sequential = True
                break
        return self._trailer()

    # --- in parallel --------------------------------------------------------------------

    def _parallel(self) -> str:
        """Decode verified chunks from self.verified on: 'end' once the stream's last chunk is
        in, 'failed' at the first chunk that does not verify (or input that ends).

        A chunk whose end is not proved on its own (octoray.formats.chunk_inflate) is held
        back: the next chunk verifying as a chunk proves it; before a failure or the last
        chunk, ISA-L decides."""
        self.regions.clear()
        results = ordered_map(inflate_chunk, self._jobs(), self.executor, self._window())
        try:
            for result in results:
                _, end = self.regions.popleft()
                if result is None:
                    if self._settle():
                        self.failed_end = end
                    return "failed"
                if result.final:
                    if not self._settle():
                        return "failed"
                    self._accept(result)
                    return "end"
                if self.held is not None:
                    self._accept(self.held[0])
                    self.held = None
                if result.proved:
                    self._accept(result)
                else:
                    self.held = (result, end)
            if self._settle():
                self.failed_end = None  # the input ended at a chunk boundary: cut short
            return "failed"
        finally:
            results.close()

    def _settle(self) -> bool:
        """Prove the held chunk with ISA-L and write it, or drop it and mark its cut as the
        failure; True if none is held or it is proved."""
        if self.held is None:
            return True
        (_, end), self.held = self.held, None
        checked = inflate_chunk_isal(self.data.get(self.verified, end), self.layout.chunk_size,
                                     self.layout.variable)
        if checked is None or checked.final:
            self.failed_end = end
            return False
        self._accept(checked)
        return True

    def _window(self) -> int:
        """The engine's window, made smaller where chunks are large (memory stays bounded)."""
        workers = max(1, getattr(self.executor, "workers", 1))
        per_task = max(1, getattr(self.executor, "jobs_per_task", 1))
        tasks = IN_FLIGHT // (self.layout.chunk_size * per_task)
        return max(workers + 1, min(default_window(workers), tasks))

    def _jobs(self):
        start, chunk = self.verified, self.chunk
        size, variable = self.layout.chunk_size, self.layout.variable
        first = chunk + max(1, getattr(self.executor, "workers", 1))
        joined = not getattr(self.executor, "in_process", True)  # pieces travel to other processes joined
        while True:
            end = self._next_end(start, chunk)
            if end <= start:
                return
            self.regions.append((start, end))
            yield self.data.get(start, end, joined), size, variable, self._near_the_end(end, chunk < first)
            start, chunk = end, chunk + 1

    def _near_the_end(self, end: int, starting: bool) -> bool:
        """Whether the chunk cut at `end` may be the stream's last or the one before it (the
        input ends within a chunk's reach after it): those are decoded strictly on the workers
        (octoray.formats.chunk_inflate), so that no chunk waits at the end for a proof on
        this thread.  While `starting` (a job for each worker) this reads no input to know:
        the workers start at once, and a stream that short has its end proved here instead."""
        if not starting:
            self.data.ensure(end + self.limit)
        return self.data.eof and self.data.end - end <= self.limit

    def _next_end(self, start: int, chunk: int) -> int:
        """Where chunk number `chunk`, starting at `start`, is believed to end: the index's
        word, else the next marker, else as far as a chunk may reach (a last chunk)."""
        sizes = self.layout.sizes
        if self.use_index and chunk < len(sizes) and sizes[chunk] <= self.limit:
            end = start + sizes[chunk]
            self.data.ensure(end)
            return min(end, self.data.end)
        found = self.data.find_marker(start, start + self.limit)
        if found > 0:
            return found
        self.data.ensure(start + self.limit)
        return min(start + self.limit, self.data.end)

    def _accept(self, result) -> None:
        data = result.data
        if data:
            self.write(data)
            self.crc = gz.crc32_combine(self.crc, result.crc, len(data)) if self.size else result.crc
            self.size += len(data)
            self.tail = data if len(data) >= gz.DICTIONARY_SIZE \
                else (self.tail[-gz.DICTIONARY_SIZE:] + data)[-gz.DICTIONARY_SIZE:]  # no copy per chunk
        self.verified += result.used
        self.chunk += 1
        self.data.release(self.verified)

    def _retry(self) -> str:
        """The chunk at self.verified failed: try it with later candidate ends, and as a last
        chunk reaching as far as a chunk may.  'resumed' (go on in parallel), 'end' (it was
        the last chunk) or 'failed'."""
        self.use_index = False
        start, failed, limit = self.verified, self.failed_end, self.verified + self.limit
        if failed is None:
            return "failed"
        ends, probe = [], start
        while len(ends) < MERGE_TRIES:
            found = self.data.find_marker(probe, limit)
            if found < 0:
                break
            if found != failed:
                ends.append(found)
            probe = found
        self.data.ensure(limit)
        ends.append(min(limit, self.data.end))
        for end in ends:
            if end <= start:
                continue
            result = inflate_chunk_isal(self.data.get(start, end), self.layout.chunk_size,
                                        self.layout.variable)
            if result is not None:
                self._accept(result)
                return "end" if result.final else "resumed"
        return "failed"

    # --- sequentially -------------------------------------------------------------------

    def _sequential(self) -> None:
        """Decode the rest of the stream from the last proved boundary, as gzip would."""
        from isal import igzip_lib, isal_zlib

        window = (gz.GZIP_START_WINDOW + self.tail[-gz.DICTIONARY_SIZE:])[-gz.DICTIONARY_SIZE:]  # gzip's zeros before the member
        inflater = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_DEFLATE, zdict=window)
        position = self.verified
        while not inflater.eof:
            piece = b""
            if inflater.needs_input:
                self.data.release(position)
                if position >= self.data.end and not self.data.more():
                    raise faults.UnexpectedEnd
                piece = self.data.get(position, self._block_end(position))
                position += len(piece)
            try:
                out = inflater.decompress(piece, MAX_OUTPUT_PIECE)
            except igzip_lib.IsalError:
                raise faults.CorruptData from None
            if out:
                self.write(out)
                self.crc = isal_zlib.crc32(out, self.crc)
                self.size += len(out)
        self.verified = position - len(inflater.unused_data)

    def _block_end(self, position: int) -> int:
        for offset, block in self.data.blocks:
            if offset <= position < offset + len(block):
                return offset + len(block)
        return self.data.end

    def _trailer(self) -> Inflated:
        end = self.verified + 8
        if not self.data.ensure(end):
            raise faults.UnexpectedEnd
        gz.check_trailer(bytes(self.data.get(self.verified, end)), self.crc, self.size)
        return Inflated(self.crc, self.size, self.data.from_offset(end), self.chunk, self.went_sequential)
