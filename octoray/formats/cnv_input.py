"""CNV-W1A1 input quantisation, shared by training, export and every kernel.

A pixel p in 0..255 maps to x = 2p/255 - 1 and then to Q1.7 fixed point
q = clamp(round(128 x), -128, 127).  The mapping is exact integer arithmetic
(no ties can occur because 255 is odd), so it is kept as a 256-entry table that
the numpy and torch code index alike.
"""

from __future__ import annotations


def _quantize_pixel(p: int) -> int:
    numerator = 256 * p - 32640  # 255 * 128 * (2p/255 - 1)
    q = (2 * numerator + 255) // 510  # round(numerator / 255), never a tie
    return max(-128, min(127, q))


PIXEL_TO_Q17: tuple[int, ...] = tuple(_quantize_pixel(p) for p in range(256))
"""Q1.7 code of each 8-bit pixel value."""

CLASS_NAMES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
