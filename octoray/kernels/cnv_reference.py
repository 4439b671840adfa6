"""The integer CNV-W1A1 forward pass in plain numpy: slow, simple, obviously right.

It is the oracle that the fast CPU kernel and the FPGA emulator are tested against.
Conventions are those of octoray.formats.cnv_model.
"""

from __future__ import annotations

import numpy as np

from octoray.formats.cnv_input import PIXEL_TO_Q17
from octoray.formats.cnv_model import CONV_SHAPES, POOL_AFTER, CnvModel

_Q17 = np.array(PIXEL_TO_Q17, dtype=np.int32)


def _patches(x: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, H-2, W-2, 9*C), patch entries in (kh, kw, c) order."""
    n, h, w, c = x.shape
    rows = [x[:, i:i + h - 2, j:j + w - 2, :] for i in range(3) for j in range(3)]
    return np.concatenate(rows, axis=3)


def _int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact integer a @ b through float32 BLAS: every product and sum here stays below
    2**24 in magnitude, where float32 represents integers exactly (numpy's integer matmul
    is 50x slower)."""
    assert a.shape[-1] * max(1, int(np.abs(a).max(initial=0))) * max(1, int(np.abs(b).max(initial=0))) < 2**24
    return (a.astype(np.float32) @ b.astype(np.float32)).astype(np.int32)


def _matches(bits: np.ndarray, weights_pm1: np.ndarray) -> np.ndarray:
    """popcount(xnor(x, w)): how many inputs equal their weight's sign."""
    x = bits.astype(np.int8)
    w = (weights_pm1 > 0).astype(np.int8)
    return _int_matmul(x, w.T) + _int_matmul(1 - x, (1 - w).T)


def _pool(bits: np.ndarray) -> np.ndarray:
    n, h, w, c = bits.shape
    return bits.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def fc3_popcounts(model: CnvModel, images: np.ndarray) -> np.ndarray:
    """(N, 10) popcounts of the last layer for uint8 images (N, 32, 32, 3)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"expected uint8 images of shape (N, 32, 32, 3), got {images.dtype} {images.shape}")
    q = _Q17[images]
    acc = _int_matmul(_patches(q), model.weights_pm1("conv1").T)
    x = acc >= model.thresholds["conv1"]
    for name in list(CONV_SHAPES)[1:]:
        x = _matches(_patches(x), model.weights_pm1(name)) >= model.thresholds[name]
        if name in POOL_AFTER:
            x = _pool(x)
    x = x.reshape(len(x), -1)  # 1x1 spatial: the channels in order
    for name in ("fc1", "fc2"):
        x = _matches(x, model.weights_pm1(name)) >= model.thresholds[name]
    return _matches(x, model.weights_pm1("fc3"))


def classify(model: CnvModel, images: np.ndarray) -> np.ndarray:
    """Class indices; np.argmax picks the lowest index among equal popcounts."""
    return np.argmax(fc3_popcounts(model, images), axis=1)
