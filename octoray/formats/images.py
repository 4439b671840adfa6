"""Images in, 32x32 RGB uint8 out: what CNV-W1A1 reads.  The one image decoder of the project:
the reader and the workers (octoray.kernels.tasks) both call decode_image.

JPEG goes through simplejpeg (libjpeg-turbo, several times Pillow's speed here, same pixels);
every other format, and any JPEG simplejpeg refuses, through Pillow.  An image that is not
32x32 RGB is converted the same way everywhere:

- palette and grayscale images become RGB; transparent pixels are laid over white;
- a non-square image is cropped to its centred square (CIFAR-10 photos are centred);
- a square of 512 pixels or more is first box-averaged down to 256-511 pixels;
- the square is resized to 32x32 with Pillow's bicubic filter, which antialiases when it
  shrinks.

Memory stays bounded whatever the input: the size is read from the header before anything
is decoded; JPEGs are decoded at reduced scale (libjpeg's DCT scaling, at most 1/8, keeping
at least 128 pixels a side); large PNGs a strip of rows at a time (octoray.formats.png_strips);
an image whose decoding would still need more than DECODE_BUDGET bytes, or that has more
than MAX_PIXELS pixels, is refused ("image too large").  These limits replace Pillow's
decompression-bomb check, which would warn on stderr.

CIFAR-10's binary batches (``data_batch_*.bin``, ``test_batch.bin``) hold 3,073-byte records:
the label byte, then the 1,024 red, 1,024 green and 1,024 blue pixels, row by row.
"""

from __future__ import annotations

import io

import numpy as np

SIDE = 32
CIFAR_RECORD = 1 + 3 * SIDE * SIDE
DECODE_BUDGET = 112 << 20  # bytes of pixels one decode may hold at a time
MAX_PIXELS = 1 << 30  # beyond this even a bounded decode would take too long
JPEG_MIN_SIDE = 4 * SIDE  # DCT scaling keeps the short side at least this long
_REDUCED_SIDE = 256  # squares from twice this are box-averaged to 1-2x this before bicubic
_SMALL_JPEG = 1 << 20  # pixels: a JPEG up to this size needs no memory estimate

_MAGICS = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a", b"GIF89a",
    b"BM",  # BMP
    b"II*\x00", b"MM\x00*",  # TIFF
    b"P1", b"P2", b"P3", b"P4", b"P5", b"P6",  # PNM
)
IMAGE_SUFFIXES = frozenset((".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff",
                            ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico"))
_PILLOW_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}  # else 4
_CHROMA_SHARE = {"444": 1.0, "422": 0.5, "440": 0.5, "420": 0.25, "411": 0.25, "441": 0.25, "Gray": 0.0}


class ImageError(ValueError):
    """Why these bytes are not an image we can classify (gzip-style reason text)."""


def looks_like_image(head: bytes) -> bool:
    """Whether the first bytes of a file carry a known image signature."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return head.startswith(_MAGICS)


def recognised_image(head: bytes) -> bool:
    """Whether the first bytes (a few KiB) start an image: a known signature, or a header that
    Pillow recognises (formats without a signature, such as TGA).  Nothing else is read."""
    if looks_like_image(head):
        return True
    Image = _pillow()
    try:
        with Image.open(io.BytesIO(head)):
            return True
    except Exception:  # noqa: BLE001 - any failure to parse a header means "no"
        return False


def decode_image(source) -> np.ndarray:
    """(32, 32, 3) uint8 RGB pixels of an encoded image; ImageError if it is not one.

    `source` is the encoded bytes, or a seekable binary file (read in pieces, never whole)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not source:
            raise ImageError("empty file")
        if source[:3] == b"\xff\xd8\xff":
            pixels = _decode_jpeg(source)
            if pixels is not None:
                return pixels
        return _decode_with_pillow(io.BytesIO(source))
    head = source.read(64)
    source.seek(0)
    if not head:
        raise ImageError("empty file")
    return _decode_with_pillow(source)


def _pillow():
    """PIL.Image, with its decompression-bomb check off: this module's own limits apply."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    return Image


def _too_large(width: int, height: int) -> ImageError:
    return ImageError(f"image too large ({width}x{height} pixels)")


def _decode_jpeg(data) -> np.ndarray | None:
    """simplejpeg's decode at reduced scale, or None to let Pillow try (and word the error)."""
    try:
        import simplejpeg
    except ImportError:
        return None
    try:
        height, width, _colour, subsampling = simplejpeg.decode_jpeg_header(data)
        if height * width > _SMALL_JPEG:
            # A progressive JPEG holds all its DCT coefficients (2 bytes each) however small
            # the output; the header does not say which kind this is, so assume the worst.
            # Over budget, Pillow's path looks closer (it knows) before refusing.
            scaled_h, scaled_w, _, _ = simplejpeg.decode_jpeg_header(
                data, min_height=JPEG_MIN_SIDE, min_width=JPEG_MIN_SIDE, min_factor=2)
            coefficients = 2 * width * height * (1 + 2 * _CHROMA_SHARE.get(subsampling, 1.0))
            output = 3 * scaled_w * scaled_h + pixel_cost("RGB", scaled_w * scaled_h)  # numpy, then Pillow
            if coefficients + output > DECODE_BUDGET or height * width > MAX_PIXELS:
                return None
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=JPEG_MIN_SIDE,
                                        min_width=JPEG_MIN_SIDE, min_factor=2)
    except (ValueError, RuntimeError):
        return None
    if pixels.shape == (SIDE, SIDE, 3):
        return pixels
    return to_cnv_input(_pillow().fromarray(pixels))


def _decode_with_pillow(fp) -> np.ndarray:
    from octoray.formats import png_strips

    Image = _pillow()
    head = fp.read(33)
    fp.seek(0)
    png = png_strips.read_header(head)
    if png is not None:
        if png.width * png.height > MAX_PIXELS:
            raise _too_large(png.width, png.height)
        if pixel_cost(png_strips.pillow_mode(png), png.width * png.height) > DECODE_BUDGET:
            if not png_strips.can_stream(png):
                raise _too_large(png.width, png.height)
            side = min(png.width, png.height)
            factor = max(1, side // _REDUCED_SIDE)
            try:
                square = png_strips.reduced_square(fp, png, factor, _to_rgb)
            except png_strips.PngError as error:
                raise ImageError(str(error)) from None
            return to_cnv_input(square)
    from PIL import UnidentifiedImageError

    try:
        image = Image.open(fp)
        _bound(image)
        image.load()
    except UnidentifiedImageError:
        raise ImageError("not an image") from None
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as error:
        text = str(error)
        if "truncated" in text.lower() or isinstance(error, EOFError):
            raise ImageError("truncated image") from None
        raise ImageError(f"damaged image ({text})") from None
    return to_cnv_input(image)


def _bound(image) -> None:
    """Refuse before decoding what would not fit DECODE_BUDGET; let a JPEG decode smaller."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise _too_large(width, height)
    cost = 0
    if image.format in ("JPEG", "MPO"):
        if image.info.get("progressive"):  # libjpeg holds every coefficient, 2 bytes each
            cost += int(2 * width * height * (1 + 2 * _CHROMA_SHARE[_jpeg_sampling(image)]))
        image.draft(None, (JPEG_MIN_SIDE, JPEG_MIN_SIDE))
    if cost + pixel_cost(image.mode, image.size[0] * image.size[1]) > DECODE_BUDGET:
        raise _too_large(width, height)


def _jpeg_sampling(image) -> str:
    """The chroma subsampling of a JPEG Pillow opened, "444" when unknown (the most memory)."""
    from PIL import JpegImagePlugin

    if len(image.getbands()) == 1:
        return "Gray"
    try:
        return {0: "444", 1: "422", 2: "420"}.get(JpegImagePlugin.get_sampling(image), "444")
    except Exception:  # noqa: BLE001 - Pillow's layer table is an internal detail
        return "444"


def pixel_cost(mode: str, pixels: int) -> int:
    """Bytes that decoding an image of this Pillow mode and size holds at its peak: the
    decoded pixels, then one converted copy (RGB, or RGBA premultiplied to be averaged)."""
    stored = _PILLOW_BYTES_PER_PIXEL.get(mode, 4)
    converted = 0 if mode in ("RGB", "L") else 4
    premultiplied = 4 if mode in ("RGBA", "LA", "PA", "P") else 0
    return pixels * (stored + converted + premultiplied)


def to_cnv_input(image) -> np.ndarray:
    """A Pillow image as (32, 32, 3) uint8 RGB, by the rules in the module docstring."""
    Image = _pillow()
    width, height = image.size
    side = min(width, height)
    factor = side // _REDUCED_SIDE
    if factor >= 2:
        side -= side % factor
    left, top = (width - side) // 2, (height - side) // 2
    square = (left, top, left + side, top + side)
    if factor >= 2:  # a large image: average boxes first (quicker, and no large copies)
        image = _reducible(image).reduce(factor, square)
    elif width != height:
        image = image.crop(square)  # before the conversions, which copy the whole image
    image = _to_rgb(image)
    if image.size != (SIDE, SIDE):
        image = image.resize((SIDE, SIDE), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8).reshape(SIDE, SIDE, 3)


_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit grey, as Pillow opens PNG and TIFF


def _eight_bit(image):
    """16-bit grey scaled to 8 bits (v * 255 / 65535, rounded): Pillow's own convert clips
    such pixels at 255, so every pixel above 255 of 65535 came out white."""
    if image.mode not in _WIDE_GREY:
        return image
    Image = _pillow()
    wide = np.asarray(image).astype(np.int64)
    return Image.fromarray(((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8), "L")


def _reducible(image):
    """The image in a mode whose pixels can be averaged (RGB, L, or RGBA/LA, which Pillow
    averages premultiplied): palettes and other modes become RGB(A) first."""
    image = _eight_bit(image)
    if image.mode in ("RGB", "L", "RGBA", "LA"):
        return image
    if image.mode == "P" and "transparency" in image.info or image.mode == "PA":
        return image.convert("RGBA")
    return image.convert("RGB")


def _to_rgb(image):
    """RGB, transparent pixels laid over white (Pillow's convert would keep their hidden colour)."""
    Image = _pillow()
    image = _eight_bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def cifar_records(data, count: int | None = None) -> np.ndarray:
    """(N, 32, 32, 3) uint8 images of whole CIFAR-10 binary records."""
    records = np.frombuffer(data, dtype=np.uint8)
    n = len(records) // CIFAR_RECORD if count is None else count
    planes = records[: n * CIFAR_RECORD].reshape(n, CIFAR_RECORD)[:, 1:].reshape(n, 3, SIDE, SIDE)
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))
