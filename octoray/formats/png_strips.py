"""Large PNGs decoded a strip of rows at a time, so that memory stays bounded whatever the
image's size (Pillow decodes a PNG whole: 12000x12000 RGB is 576 MB of pixels).

Each strip's rows, still filtered, become a small PNG of their own, headed by the unfiltered
row before them (the filters refer to it); Pillow undoes the filters, and only the centred
square is kept, box-averaged by the caller's factor.  The small PNG declares a pixel format
with the same bytes per pixel whose decoding keeps every byte (8-bit L, LA, RGB or RGBA), so
that the last row comes back unfiltered for the next strip; the strip's real pixel format is
then read from those bytes.  Interlaced PNGs and 16-bit RGB(A) have no such carrier and are
not streamed.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

SIGNATURE = b"\x89PNG\r\n\x1a\n"
STRIP_BYTES = 4 << 20  # unfiltered bytes of one strip
_READ = 1 << 18

# (bit depth, colour type) -> (Pillow mode, Pillow raw mode): how Pillow reads a PNG's rows
_PIXELS = {
    (1, 0): ("1", "1"), (2, 0): ("L", "L;2"), (4, 0): ("L", "L;4"), (8, 0): ("L", "L"),
    (16, 0): ("I;16", "I;16B"), (8, 2): ("RGB", "RGB"), (16, 2): ("RGB", "RGB;16B"),
    (1, 3): ("P", "P;1"), (2, 3): ("P", "P;2"), (4, 3): ("P", "P;4"), (8, 3): ("P", "P"),
    (8, 4): ("LA", "LA"), (16, 4): ("RGBA", "LA;16B"), (8, 6): ("RGBA", "RGBA"),
    (16, 6): ("RGBA", "RGBA;16B"),
}
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_CARRIERS = {1: (8, 0), 2: (8, 4), 3: (8, 2), 4: (8, 6)}  # bytes per pixel -> lossless 8-bit type


class PngError(ValueError):
    """A damaged or truncated PNG (reason text for the user)."""


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    depth: int
    colour: int
    interlaced: bool

    @property
    def bits_per_pixel(self) -> int:
        return self.depth * _CHANNELS[self.colour]


def read_header(head: bytes) -> PngHeader | None:
    """The IHDR of a PNG's first 33 bytes; None if they do not start a PNG we understand."""
    if len(head) < 33 or not head.startswith(SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _compression, _filter, interlace = struct.unpack(">IIBBBBB", head[16:29])
    if (depth, colour) not in _PIXELS or not width or not height:
        return None
    return PngHeader(width, height, depth, colour, interlace == 1)


def pillow_mode(header: PngHeader) -> str:
    return _PIXELS[(header.depth, header.colour)][0]


def can_stream(header: PngHeader) -> bool:
    return not header.interlaced and max(1, header.bits_per_pixel // 8) in _CARRIERS


def reduced_square(fp, header: PngHeader, factor: int, to_rgb):
    """The image's centred square (its side rounded down to a multiple of `factor`), made RGB by
    `to_rgb` and box-averaged `factor` times: a Pillow RGB image.  Rows below the square are
    never read."""
    from PIL import Image

    width, height = header.width, header.height
    side = min(width, height) // factor * factor
    left, top = (width - side) // 2, (height - side) // 2
    row_bytes = (width * header.bits_per_pixel + 7) // 8
    pixel_bytes = max(1, header.bits_per_pixel // 8)
    mode, raw_mode = _PIXELS[(header.depth, header.colour)]
    per_strip = max(1, STRIP_BYTES // row_bytes)
    per_strip = -(-per_strip // factor) * factor
    ancillary, rows = _chunks(fp, row_bytes)
    palette, transparency = ancillary.get(b"PLTE"), ancillary.get(b"tRNS")
    square = Image.new("RGB", (side // factor, side // factor))
    previous = None  # the last row of the strip before, unfiltered
    for start, stop in _strips(top, side, per_strip):
        filtered = rows.read((stop - start) * (row_bytes + 1))
        if len(filtered) < (stop - start) * (row_bytes + 1):
            raise PngError("truncated image")
        carrier = _unfiltered(filtered, previous, row_bytes, pixel_bytes)
        first = 0 if previous is None else 1  # the row before, heading the carrier
        previous = carrier.crop((0, carrier.height - 1, carrier.width, carrier.height)).tobytes()
        if stop <= top:
            continue
        if _CARRIERS[pixel_bytes] == (header.depth, header.colour):  # already these pixels
            strip = carrier.crop((left, first, left + side, carrier.height))
        else:
            raw = carrier.tobytes()[first * row_bytes:]
            strip = Image.frombytes(mode, (width, stop - start), raw, "raw", raw_mode)
            if palette is not None and mode == "P":
                strip.putpalette(palette)
                if transparency is not None:
                    strip.info["transparency"] = transparency
            strip = strip.crop((left, 0, left + side, stop - start))
        strip = to_rgb(strip)
        if factor > 1:
            strip = strip.reduce(factor)
        square.paste(strip, (0, (start - top) // factor))
    return square


def _strips(top: int, side: int, per_strip: int):
    """Row ranges: up to the square's top, then down the square in steps of `per_strip`."""
    start = 0
    while start < top:
        stop = min(top, start + per_strip)
        yield start, stop
        start = stop
    while start < top + side:
        stop = min(top + side, start + per_strip)
        yield start, stop
        start = stop


def _unfiltered(filtered: bytes, previous: bytes | None, row_bytes: int, pixel_bytes: int):
    """The rows with PNG's filters undone, by Pillow, as an image of a lossless 8-bit type
    with the same bytes per pixel; `previous` heads it (filter 0: as it is)."""
    from PIL import Image

    depth, colour = _CARRIERS[pixel_bytes]
    rows = len(filtered) // (row_bytes + 1) + (previous is not None)
    deflate = zlib.compressobj(0)  # stored blocks: Pillow inflates them at memory speed
    idat = [deflate.compress(b"\x00" + previous) if previous is not None else b"",
            deflate.compress(filtered), deflate.flush()]
    carrier = b"".join((
        SIGNATURE,
        _chunk(b"IHDR", struct.pack(">IIBBBBB", row_bytes // pixel_bytes, rows, depth, colour, 0, 0, 0)),
        struct.pack(">I", sum(map(len, idat))), b"IDAT", *idat, b"\0\0\0\0",  # Pillow skips IDAT's CRC
        _chunk(b"IEND", b""),
    ))
    try:
        image = Image.open(io.BytesIO(carrier))
        image.load()
    except (OSError, ValueError, SyntaxError) as error:
        raise PngError(f"damaged image ({error})") from None
    return image


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))


def _chunks(fp, row_bytes: int):
    """The chunks before the image data (PLTE and tRNS kept), and a reader of its inflated rows."""
    fp.seek(len(SIGNATURE))
    kept = {}
    while True:
        header = fp.read(8)
        if len(header) < 8:
            raise PngError("truncated image")
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IDAT":
            return kept, _InflatedRows(fp, length)
        if kind == b"IEND":
            raise PngError("damaged image (no image data)")
        if kind in (b"PLTE", b"tRNS") and length <= 1024:
            kept[kind] = fp.read(length)
            fp.seek(4, io.SEEK_CUR)
        else:
            fp.seek(length + 4, io.SEEK_CUR)


class _InflatedRows:
    """The zlib stream spread over consecutive IDAT chunks, inflated as far as asked."""

    def __init__(self, fp, first_length: int):
        self._fp, self._left = fp, first_length  # bytes left in the current IDAT chunk
        self._inflater = zlib.decompressobj()
        self._pending = b""  # compressed bytes read but not yet inflated

    def read(self, size: int) -> bytes:
        parts, have = [], 0
        while have < size:
            if not self._pending:
                self._pending = self._compressed()
                if not self._pending:
                    break
            try:
                part = self._inflater.decompress(self._pending, size - have)
            except zlib.error as error:
                raise PngError(f"damaged image ({error})") from None
            self._pending = self._inflater.unconsumed_tail
            if part:
                parts.append(part)
                have += len(part)
            elif self._inflater.eof:
                break
        return b"".join(parts)

    def _compressed(self) -> bytes:
        while not self._left:  # the next chunk, if it is IDAT too
            self._fp.seek(4, io.SEEK_CUR)  # CRC
            header = self._fp.read(8)
            if len(header) < 8:
                return b""
            length, kind = struct.unpack(">I4s", header)
            if kind != b"IDAT":
                return b""
            self._left = length
        data = self._fp.read(min(self._left, _READ))
        self._left -= len(data)
        if not data:
            raise PngError("truncated image")
        return data
