"""Images in, 32x32 RGB uint8 out: what CNV-W1A1 reads.

JPEG goes through simplejpeg (libjpeg-turbo, several times Pillow's speed here, same pixels);
every other format, and any JPEG simplejpeg refuses, through Pillow.  An image that is not
32x32 RGB is converted the same way everywhere:

- palette and grayscale images become RGB; transparent pixels are laid over white;
- a non-square image is cropped to its centred square (CIFAR-10 photos are centred);
- the square is resized to 32x32 with Pillow's bicubic filter, which antialiases when it
  shrinks.

CIFAR-10's binary batches (``data_batch_*.bin``, ``test_batch.bin``) hold 3,073-byte records:
the label byte, then the 1,024 red, 1,024 green and 1,024 blue pixels, row by row.
"""

from __future__ import annotations

import io

import numpy as np

SIDE = 32
CIFAR_RECORD = 1 + 3 * SIDE * SIDE

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


class ImageError(ValueError):
    """Why these bytes are not an image we can classify (gzip-style reason text)."""


def looks_like_image(head: bytes) -> bool:
    """Whether the first bytes of a file carry a known image signature."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return head.startswith(_MAGICS)


def decode_image(data: bytes) -> np.ndarray:
    """(32, 32, 3) uint8 RGB pixels of an encoded image; ImageError if it is not one."""
    if not data:
        raise ImageError("empty file")
    if data[:3] == b"\xff\xd8\xff":
        pixels = _decode_jpeg(data)
        if pixels is not None:
            return pixels
    return _decode_with_pillow(data)


def _decode_jpeg(data: bytes) -> np.ndarray | None:
    """simplejpeg's decode, or None to let Pillow try (and word the error)."""
    try:
        import simplejpeg
    except ImportError:
        return None
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB")
    except (ValueError, RuntimeError):
        return None
    if pixels.shape == (SIDE, SIDE, 3):
        return pixels
    from PIL import Image

    return to_cnv_input(Image.fromarray(pixels))


def _decode_with_pillow(data: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        raise ImageError("not an image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        text = str(error)
        if "truncated" in text.lower() or isinstance(error, EOFError):
            raise ImageError("truncated image") from None
        raise ImageError(f"damaged image ({text})") from None
    except Image.DecompressionBombError as error:
        raise ImageError(str(error)) from None
    return to_cnv_input(image)


def to_cnv_input(image) -> np.ndarray:
    """A Pillow image as (32, 32, 3) uint8 RGB, by the rules in the module docstring."""
    from PIL import Image

    image = _flatten_alpha(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    if width != height:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (SIDE, SIDE):
        image = image.resize((SIDE, SIDE), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8).reshape(SIDE, SIDE, 3)


def _flatten_alpha(image):
    """Transparent pixels laid over white (Pillow's convert would keep their hidden colour)."""
    from PIL import Image

    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image


def cifar_records(data, count: int | None = None) -> np.ndarray:
    """(N, 32, 32, 3) uint8 images of whole CIFAR-10 binary records."""
    records = np.frombuffer(data, dtype=np.uint8)
    n = len(records) // CIFAR_RECORD if count is None else count
    planes = records[: n * CIFAR_RECORD].reshape(n, CIFAR_RECORD)[:, 1:].reshape(n, 3, SIDE, SIDE)
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))
