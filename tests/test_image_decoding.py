"""The image decoder fclassify and its workers share (octoray.formats.images): large images
decoded in bounded memory give what the whole decode gives, headers are believed only
within limits, and file names are written back unambiguously (octoray.cli.fclassify_output)."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from octoray.cli.fclassify_output import json_path, per_second, shown, tsv_field
from octoray.formats import images, png_strips
from octoray.formats.images import ImageError, decode_image

MODES = ["RGB", "RGBA", "L", "LA", "P", "P+tRNS", "1", "I;16"]


def png_of(mode: str, pixels: np.ndarray) -> bytes:
    """A PNG of random pixels in one of the PNG pixel formats Pillow writes."""
    image = Image.fromarray(pixels, "RGBA")
    options = {}
    if mode in ("P", "P+tRNS"):
        image = image.convert("RGB").quantize(16)
        if mode == "P+tRNS":
            options["transparency"] = bytes(range(0, 256, 16))
    elif mode == "I;16":
        image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    else:
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, "PNG", **options)
    return out.getvalue()


@settings(max_examples=60, deadline=None)
@given(mode=st.sampled_from(MODES), width=st.integers(1, 70), height=st.integers(1, 70),
       factor=st.integers(1, 4), strip_bytes=st.integers(1, 400), seed=st.integers(0, 2**32 - 1))
def test_a_png_decoded_strip_by_strip_equals_the_whole_decode(mode, width, height, factor, strip_bytes, seed):
    factor = min(factor, width, height)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    data = png_of(mode, pixels)
    header = png_strips.read_header(data[:33])
    assert header is not None and png_strips.can_stream(header)
    saved, png_strips.STRIP_BYTES = png_strips.STRIP_BYTES, strip_bytes  # many strips, some of one row
    try:
        got = png_strips.reduced_square(io.BytesIO(data), header, factor, images._to_rgb)
    finally:
        png_strips.STRIP_BYTES = saved
    whole = Image.open(io.BytesIO(data))
    side = min(width, height) // factor * factor
    left, top = (width - side) // 2, (height - side) // 2
    expected = images._to_rgb(whole.crop((left, top, left + side, top + side)))
    if factor > 1:
        expected = expected.reduce(factor)
    assert np.array_equal(np.asarray(got), np.asarray(expected))


def smooth(side_x: int, side_y: int, seed: int = 1) -> Image.Image:
    small = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((side_x, side_y), Image.Resampling.BICUBIC)


def direct(image: Image.Image) -> np.ndarray:
    """The plain conversion: centred square, straight to 32x32 bicubic (what small images get)."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.convert("RGB").crop((left, top, left + side, top + side))
    return np.asarray(square.resize((32, 32), Image.Resampling.BICUBIC), dtype=np.int16)


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "BMP"])
def test_large_images_decoded_reduced_look_like_the_direct_conversion(kind):
    picture = smooth(2400, 1800)
    data = io.BytesIO()
    picture.save(data, kind, **({"quality": 95} if kind == "JPEG" else {}))
    reduced = decode_image(data.getvalue()).astype(np.int16)
    assert np.abs(reduced - direct(picture)).mean() < 3  # of 255: the same picture


def test_a_large_png_through_the_strip_decoder_looks_like_the_direct_conversion(monkeypatch):
    picture = smooth(1300, 1100, seed=2)
    data = io.BytesIO()
    picture.save(data, "PNG")
    monkeypatch.setattr(images, "DECODE_BUDGET", 1 << 20)  # too large to decode whole
    reduced = decode_image(data.getvalue()).astype(np.int16)
    assert np.abs(reduced - direct(picture)).mean() < 3


def png_header_only(width: int, height: int, depth: int = 8, colour: int = 2, interlace: int = 0,
                    idat: bytes = b"") -> bytes:
    body = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind))))
    return png_strips.SIGNATURE + chunk(b"IHDR", body) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("header, reason", [
    (dict(width=60000, height=60000), "image too large (60000x60000 pixels)"),  # more than MAX_PIXELS
    (dict(width=9000, height=9000, depth=16), "image too large (9000x9000 pixels)"),  # 16-bit RGB: not streamed
    (dict(width=9000, height=9000, interlace=1), "image too large (9000x9000 pixels)"),  # interlaced
    (dict(width=9000, height=9000, idat=zlib.compress(b"\0" * 1000)), "truncated image"),  # streamed, short
])
def test_a_png_header_is_believed_only_within_limits(header, reason):
    with pytest.raises(ImageError) as refused:
        decode_image(png_header_only(**header))
    assert str(refused.value) == reason


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("side", [32, 1280])  # decoded whole, and reduced on the way
def test_16_bit_grey_is_scaled_to_8_bits_not_clipped(fmt, side):
    """Pillow's convert clips 16-bit grey at 255 (nearly every pixel white): the same picture
    stored with 8 and with 16 bits a pixel decodes to the same pixels."""
    rng = np.random.default_rng(side)
    grey8 = np.kron(rng.integers(0, 256, (4, 4)), np.ones((side // 4, side // 4), np.int64)).astype(np.uint8)
    stored = []
    for array in (grey8, grey8.astype(np.uint16) * 257):
        data = io.BytesIO()
        Image.fromarray(array).save(data, fmt)
        stored.append(data.getvalue())
    assert Image.open(io.BytesIO(stored[1])).mode == "I;16"
    eight, sixteen = (decode_image(data) for data in stored)
    assert np.array_equal(eight, sixteen) and len(np.unique(sixteen)) > 4


def test_empty_and_foreign_bytes():
    for data, reason in [(b"", "empty file"), (b"hello, world" * 100, "not an image")]:
        with pytest.raises(ImageError, match=reason):
            decode_image(data)
        with pytest.raises(ImageError, match=reason):
            decode_image(io.BytesIO(data))
    assert images.recognised_image(open(__file__, "rb").read(512)) is False


def tsv_unescaped(field: str) -> str:
    """The inverse of fclassify's TSV escaping, as a reader of its output would write it."""
    out, chars = [], iter(field)
    for char in chars:
        out.append({"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}[next(chars)] if char == "\\" else char)
    return "".join(out)


@given(st.text())
def test_tsv_names_are_one_field_and_read_back_exactly(name):
    field = tsv_field(name)
    assert not {"\t", "\n", "\r"} & set(field)
    assert tsv_unescaped(field) == name


@given(st.binary(min_size=1))
def test_json_names_are_valid_utf8_json_and_keep_the_exact_bytes(raw):
    name = os.fsdecode(raw)
    text = json.dumps(json_path(name), ensure_ascii=False)
    record = json.loads(text.encode("utf-8").decode("utf-8"))  # encodable: valid UTF-8
    assert record["path"] == raw.decode("utf-8", "replace")
    if "path_base64" in record:
        assert base64.b64decode(record["path_base64"]) == raw
    else:
        assert record["path"].encode("utf-8") == raw


def test_names_in_messages_are_one_line_without_control_characters():
    """A name reaches stderr on one line, and ESC and the other control characters escaped:
    a file's name cannot recolour or move the text of the terminal it is shown on."""
    assert shown("esc\x1b[31mred\tx\n.jpg") == "esc\\x1b[31mred\\tx\\n.jpg"
    assert shown("été ok.jpg") == "été ok.jpg"  # printable letters of any script stay as they are
    assert shown("bell\x07del\x7f") == "bell\\x07del\\x7f"


@pytest.mark.parametrize("count, seconds, shown_rate", [(2, 4.46, "0.45"), (5, 1.0, "5"), (12551, 1.0, "12,551"),
                                                        (0, 3.0, "0")])
def test_rates_keep_two_digits_below_10_a_second(count, seconds, shown_rate):
    assert per_second(count, seconds) == shown_rate
