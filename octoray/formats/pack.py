"""pack(1)'s Huffman format (.z, magic 1f 1e), read as gzip 1.12 reads it.

A pack stream is: the original length (32 bits, big-endian), the longest code length
(1..25), the number of leaves at each length (at the longest, two less than there are, the
end-of-file code not counted nor sent), the leaves' bytes, shortest codes first, then the
codes, most significant bit first.  At each length the tree's inner nodes take the lowest
code values and the leaves the next ones, in the order sent; the end-of-file code is the
longest code's last value.  gzip checks the tree, decodes to the end-of-file code, checks
the length, and goes on to whatever member follows, so a pack stream need not be last.

Pure Python (a table look-up per code of up to 12 bits): pack files are rare and small.
"""

from __future__ import annotations

from octoray.formats import faults
from octoray.formats.raw_inflate import Input

MAGIC = b"\x1f\x1e"
MAX_BITS = 25
PEEK_BITS = 12


class Decoded:
    """A stream decoded: bytes out, and the input read past it (then whatever the caller's
    `pieces` still yields): gzip reads on for another member."""

    __slots__ = ("size", "unused")

    def __init__(self, size: int, unused: bytes):
        self.size, self.unused = size, unused


class _Tree:
    def __init__(self, source: Input):
        header = _exactly(source, 5)
        self.length = int.from_bytes(header[:4], "big")
        self.max_len = header[4]
        if not 0 < self.max_len <= MAX_BITS:
            raise faults.HuffmanLengthRange()
        self.leaves = [0]
        room, count = 1, 0
        for bits in range(1, self.max_len + 1):  # each count checked as it is read, as gzip does
            self.leaves.append(_exactly(source, 1)[0])
            if room - (bits == self.max_len) < self.leaves[bits]:
                raise faults.TooManyLeaves()
            room = (room - self.leaves[bits] + 1) * 2 - 1
            count += self.leaves[bits]
        if count >= 256:
            raise faults.TooManyLeaves()
        self.leaves[self.max_len] += 1
        self.literals = _exactly(source, sum(self.leaves))
        self.leaves[self.max_len] += 1  # the end-of-file code
        self.parents = [0] * (self.max_len + 1)
        self.first = [0] * (self.max_len + 1)  # index in literals of each length's first leaf
        nodes, base = 0, sum(self.leaves) - 1
        for bits in range(self.max_len, 0, -1):
            nodes >>= 1
            self.parents[bits] = nodes
            base -= self.leaves[bits]
            self.first[bits] = base + 1 - nodes
            nodes += self.leaves[bits]
        if nodes >> 1 != 1:
            raise faults.TooFewLeaves()
        self.peek = min(self.max_len, PEEK_BITS)
        self.table = self._table()

    def _table(self) -> list:
        """For each `peek`-bit pattern: (code length, byte or None for end of file) when a code
        that short starts it, else None (walk on bit by bit)."""
        table: list = [None] * (1 << self.peek)
        for bits in range(1, self.peek + 1):
            for code in range(self.parents[bits], self.parents[bits] + self.leaves[bits]):
                value = self._leaf(bits, code)
                shift = self.peek - bits
                for pattern in range(code << shift, (code + 1) << shift):
                    table[pattern] = (bits, value)
        return table

    def _leaf(self, bits: int, code: int):
        if bits == self.max_len and code == self.leaves[bits] - 1:
            return None
        return self.literals[self.first[bits] + code]


def _exactly(source: Input, n: int) -> bytes:
    data = source.read(n)
    if len(data) < n:
        raise faults.UnexpectedEnd()
    return data


def decode(pieces, write, chunk: int = 1 << 16) -> Decoded:
    """Decode the pack stream that `pieces` yields, starting just after the magic, to `write`.
    Raises a faults.Fault where gzip refuses it (an end of input where gzip's read fails, which
    comes before unpack's own checks, is faults.UnexpectedEnd); what came before is written."""
    source = Input(iter(pieces))
    tree = _Tree(source)
    out = bytearray()
    size = 0
    acc = nbits = 0
    data, pos = b"", 0
    table, peek, mask = tree.table, tree.peek, (1 << tree.peek) - 1
    while True:
        while nbits < peek:  # like gzip, never more bits than the end-of-file code spans
            if pos == len(data):
                data, pos = source.next_piece(), 0
                if not data:
                    write(bytes(out))
                    raise faults.UnexpectedEnd()
            acc = (acc << 8 | data[pos]) & 0xFFFFFFFFFFFF
            pos += 1
            nbits += 8
        entry = table[(acc >> (nbits - peek)) & mask]
        if entry is not None:
            bits, value = entry
        else:
            bits = peek
            code = (acc >> (nbits - peek)) & mask
            while code < tree.parents[bits]:
                bits += 1
                while nbits < bits:
                    if pos == len(data):
                        data, pos = source.next_piece(), 0
                        if not data:
                            write(bytes(out))
                            raise faults.UnexpectedEnd()
                    acc = (acc << 8 | data[pos]) & 0xFFFFFFFFFFFF
                    pos += 1
                    nbits += 8
                code = (acc >> (nbits - bits)) & ((1 << bits) - 1)
            value = tree._leaf(bits, code)
        nbits -= bits
        if value is None:
            break
        out.append(value)
        if len(out) >= chunk:
            size += len(out)
            write(bytes(out))
            out.clear()
    size += len(out)
    if out:
        write(bytes(out))
    source.unread(data[pos:])
    if tree.length != size & 0xFFFFFFFF:
        raise faults.PackLengthMismatch()
    return Decoded(size, source.held)
