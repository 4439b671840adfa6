"""Streaming raw inflate over pieces of input, for the containers other than gzip members
(zlib streams, zip entries): output in bounded pieces, a running check value, and the input
left after the deflate stream.  Damage is raised as octoray.formats.faults types."""

from __future__ import annotations

from octoray.formats import faults

MAX_OUTPUT_PIECE = 1 << 20


class Input:
    """Pieces of input with the unread rest of the current piece kept: containers read a few
    header bytes, hand the rest to the inflater and take back what it did not use."""

    def __init__(self, pieces):
        self._pieces = iter(pieces)
        self.held = b""
        self.consumed = 0

    def next_piece(self) -> bytes:
        """The held bytes, else the next piece; b"" at the end of input."""
        if self.held:
            piece, self.held = self.held, b""
        else:
            piece = b""
            while not piece:
                piece = next(self._pieces, None)
                if piece is None:
                    return b""
            piece = bytes(piece)
        self.consumed += len(piece)
        return piece

    def unread(self, data: bytes) -> None:
        if data:
            self.held = data + self.held
            self.consumed -= len(data)

    def read(self, n: int) -> bytes:
        """Exactly `n` bytes, fewer only at the end of input."""
        parts, got = [], 0
        while got < n:
            piece = self.next_piece()
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        data = b"".join(parts)
        self.unread(data[n:])
        return data[:n]


def inflate(source: Input, write, check, initial: int) -> tuple[int, int]:
    """Inflate one raw deflate stream from `source` to `write`; return (bytes out, check value
    of the output, `check` being zlib-style crc32 or adler32 starting from `initial`).  The
    input after the stream stays in `source`.  Raises faults.CorruptData or faults.UnexpectedEnd."""
    from isal import igzip_lib

    inflater = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_DEFLATE)
    size, value = 0, initial
    while not inflater.eof:
        piece = b""
        if inflater.needs_input:
            piece = source.next_piece()
            if not piece:
                raise faults.UnexpectedEnd()
        try:
            out = inflater.decompress(piece, MAX_OUTPUT_PIECE)
        except igzip_lib.IsalError:
            raise faults.CorruptData() from None
        if out:
            size += len(out)
            value = check(out, value)
            write(out)
    source.unread(inflater.unused_data)
    return size, value
