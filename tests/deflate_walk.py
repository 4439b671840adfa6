"""A slow, plain deflate decoder (RFC 1951) that records where every block starts: the oracle
the chunk verifier is tested against.  Written for clarity, not speed; small inputs only."""

from __future__ import annotations

LENGTH_BASE = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
               131, 163, 195, 227, 258]
LENGTH_EXTRA = [0] * 8 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4 + [5] * 4 + [0]
DIST_BASE = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
             2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577]
DIST_EXTRA = [0, 0, 0, 0] + [n for n in range(1, 14) for _ in (0, 1)]
CODE_LENGTH_ORDER = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]


class Invalid(Exception):
    pass


class _Bits:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def bit(self) -> int:
        if self.pos >= 8 * len(self.data):
            raise Invalid("out of input")
        value = self.data[self.pos >> 3] >> (self.pos & 7) & 1
        self.pos += 1
        return value

    def bits(self, n: int) -> int:
        return sum(self.bit() << i for i in range(n))


def _code(lengths: list[int]) -> dict[tuple[int, int], int]:
    """Canonical Huffman code: (length, code) -> symbol."""
    table, code = {}, 0
    for length in range(1, 16):
        for symbol, symbol_length in enumerate(lengths):
            if symbol_length == length:
                table[(length, code)] = symbol
                code += 1
        code <<= 1
    return table


def _symbol(bits: _Bits, table) -> int:
    code = 0
    for length in range(1, 16):
        code = code << 1 | bits.bit()
        if (length, code) in table:
            return table[(length, code)]
    raise Invalid("no such code")


FIXED = (_code([8] * 144 + [9] * 112 + [7] * 24 + [8] * 8), _code([5] * 30))


def walk(data: bytes) -> tuple[bytes, list[int], int]:
    """(output, bit offsets where each block starts, bit offset just past the stream)."""
    bits, out, starts = _Bits(data), bytearray(), []
    while True:
        starts.append(bits.pos)
        final, kind = bits.bit(), bits.bits(2)
        if kind == 0:
            bits.pos = (bits.pos + 7) & ~7
            length, check = bits.bits(16), bits.bits(16)
            if length != check ^ 0xFFFF:
                raise Invalid("stored length")
            out += bytes(bits.bits(8) for _ in range(length))
        elif kind == 3:
            raise Invalid("block type 3")
        else:
            literals, distances = FIXED if kind == 1 else _dynamic_tables(bits)
            _inflate_block(bits, literals, distances, out)
        if final:
            return bytes(out), starts, bits.pos


def _dynamic_tables(bits: _Bits):
    literal_count, distance_count, length_count = bits.bits(5) + 257, bits.bits(5) + 1, bits.bits(4) + 4
    header_lengths = [0] * 19
    for i in range(length_count):
        header_lengths[CODE_LENGTH_ORDER[i]] = bits.bits(3)
    header = _code(header_lengths)
    lengths: list[int] = []
    while len(lengths) < literal_count + distance_count:
        symbol = _symbol(bits, header)
        if symbol < 16:
            lengths.append(symbol)
        elif symbol == 16:
            if not lengths:
                raise Invalid("repeat with nothing before")
            lengths += [lengths[-1]] * (3 + bits.bits(2))
        else:
            lengths += [0] * ((3 + bits.bits(3)) if symbol == 17 else (11 + bits.bits(7)))
    if len(lengths) > literal_count + distance_count:
        raise Invalid("too many lengths")
    return _code(lengths[:literal_count]), _code(lengths[literal_count:])


def _inflate_block(bits: _Bits, literals, distances, out: bytearray) -> None:
    while True:
        symbol = _symbol(bits, literals)
        if symbol < 256:
            out.append(symbol)
        elif symbol == 256:
            return
        else:
            if symbol > 285:
                raise Invalid("length symbol")
            length = LENGTH_BASE[symbol - 257] + bits.bits(LENGTH_EXTRA[symbol - 257])
            code = _symbol(bits, distances)
            if code > 29:
                raise Invalid("distance symbol")
            distance = DIST_BASE[code] + bits.bits(DIST_EXTRA[code])
            if distance > len(out):
                raise Invalid("distance too far back")
            for _ in range(length):
                out.append(out[-distance])
