"""The fast CPU kernel for CNV-W1A1: bit-packed XNOR-popcount convolutions in numba.

Activations after conv1 are bits, 64 channels to a uint64 word; a binary layer's output
channel is ``popcount(~(x ^ w)) >= T`` summed over the 3x3 window's words, and 2x2
max-pooling is an OR of words.  conv1 works on the 8-bit input in integer arithmetic.
Images of a batch run in parallel (``prange``); compiled once and cached on disk.
Results equal octoray.kernels.cnv_reference exactly (tests/test_cnv_kernels.py).
"""

from __future__ import annotations

import numpy as np

from octoray.formats.cnv_input import PIXEL_TO_Q17
from octoray.formats.cnv_model import CONV_SHAPES, FC_SHAPES, CnvModel, fan_in

_Q17 = np.array(PIXEL_TO_Q17, dtype=np.int32)


def _words(bits_by_input: np.ndarray) -> np.ndarray:
    """(..., C) bits (C a multiple of 64) -> (..., C/64) uint64, bit i of word j = input 64j+i."""
    packed = np.packbits(bits_by_input.astype(bool), axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8")


class PackedModel:
    """The model's weights rearranged for the kernel: words per (output, window position)."""

    def __init__(self, model: CnvModel):
        w1 = model.weights_pm1("conv1").astype(np.int32)  # (64, 27), (kh, kw, cin) order
        self.conv1_weights = np.ascontiguousarray(w1.T)  # (27, 64): channels innermost
        self.conv1_thresholds = model.thresholds["conv1"].astype(np.int32)
        self.convs = []
        for name in list(CONV_SHAPES)[1:]:
            cin, cout = CONV_SHAPES[name]
            bits = model.weights_pm1(name).reshape(cout, 9, cin) > 0
            words = _words(bits).reshape(cout, 9 * cin // 64)
            self.convs.append((np.ascontiguousarray(words), model.thresholds[name].astype(np.int32)))
        self.fcs = []
        for name in FC_SHAPES:
            bits = model.weights_pm1(name) > 0
            thresholds = model.thresholds.get(name)
            self.fcs.append((_words(bits), None if thresholds is None else thresholds.astype(np.int32)))
        assert all(fan_in(n) % 64 == 0 for n in ("fc1", "fc2", "fc3"))


_compiled = None


def _compile():
    """Build the numba kernels on first use (importing numba costs 0.2-0.4 s)."""
    global _compiled
    if _compiled is not None:
        return _compiled
    import numba
    from numba import njit, prange

    @njit(inline="always", cache=True)
    def popcount(x):
        x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
        x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
        x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
        return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)

    @njit(cache=True)
    def conv1(q, weights_t, thresholds, out):
        # q: (32, 32, 3) int32; weights_t: (27, 64) int32; out: (30, 30, 1) uint64 (64 channels)
        acc = np.empty(64, dtype=np.int32)
        for y in range(30):
            for x in range(30):
                acc[:] = 0
                k = 0
                for dy in range(3):
                    for dx in range(3):
                        for ch in range(3):
                            value = q[y + dy, x + dx, ch]
                            for c in range(64):  # vectorised across the channels
                                acc[c] += value * weights_t[k, c]
                            k += 1
                word = np.uint64(0)
                for c in range(64):
                    if acc[c] >= thresholds[c]:
                        word |= np.uint64(1) << np.uint64(c)
                out[y, x, 0] = word

    @njit(cache=True)
    def conv(inp, weights, thresholds, out):
        # inp: (H, W, Win) uint64; weights: (Cout, 9 * Win); out: (H-2, W-2, Cout/64)
        h, w, win = inp.shape
        cout, k = weights.shape
        patch = np.empty(k, dtype=np.uint64)
        for y in range(h - 2):
            for x in range(w - 2):
                i = 0
                for dy in range(3):
                    for dx in range(3):
                        for j in range(win):
                            patch[i] = inp[y + dy, x + dx, j]
                            i += 1
                for word_index in range(cout // 64):
                    word = np.uint64(0)
                    for bit in range(64):
                        c = word_index * 64 + bit
                        matches = np.uint64(0)
                        for i in range(k):
                            matches += popcount(~(patch[i] ^ weights[c, i]))
                        if np.int64(matches) >= thresholds[c]:
                            word |= np.uint64(1) << np.uint64(bit)
                    out[y, x, word_index] = word

    @njit(cache=True)
    def pool(inp, out):
        h, w, words = out.shape
        for y in range(h):
            for x in range(w):
                for j in range(words):
                    out[y, x, j] = (inp[2 * y, 2 * x, j] | inp[2 * y, 2 * x + 1, j]
                                    | inp[2 * y + 1, 2 * x, j] | inp[2 * y + 1, 2 * x + 1, j])

    @njit(cache=True)
    def dense_matches(inp, weights, out):
        for c in range(weights.shape[0]):
            matches = np.uint64(0)
            for j in range(inp.shape[0]):
                matches += popcount(~(inp[j] ^ weights[c, j]))
            out[c] = np.int64(matches)

    @njit(cache=True)
    def dense(inp, weights, thresholds, out):
        counts = np.empty(weights.shape[0], dtype=np.int64)
        dense_matches(inp, weights, counts)
        for j in range(out.shape[0]):
            word = np.uint64(0)
            for bit in range(64):
                if counts[j * 64 + bit] >= thresholds[j * 64 + bit]:
                    word |= np.uint64(1) << np.uint64(bit)
            out[j] = word

    @njit(parallel=True, cache=True)
    def network(q, w1, t1, w2, t2, w3, t3, w4, t4, w5, t5, w6, t6, f1, u1, f2, u2, f3, result):
        for n in prange(q.shape[0]):
            a1 = np.empty((30, 30, 1), dtype=np.uint64)
            conv1(q[n], w1, t1, a1)
            a2 = np.empty((28, 28, 1), dtype=np.uint64)
            conv(a1, w2, t2, a2)
            p2 = np.empty((14, 14, 1), dtype=np.uint64)
            pool(a2, p2)
            a3 = np.empty((12, 12, 2), dtype=np.uint64)
            conv(p2, w3, t3, a3)
            a4 = np.empty((10, 10, 2), dtype=np.uint64)
            conv(a3, w4, t4, a4)
            p4 = np.empty((5, 5, 2), dtype=np.uint64)
            pool(a4, p4)
            a5 = np.empty((3, 3, 4), dtype=np.uint64)
            conv(p4, w5, t5, a5)
            a6 = np.empty((1, 1, 4), dtype=np.uint64)
            conv(a5, w6, t6, a6)
            h1 = np.empty(8, dtype=np.uint64)
            dense(a6[0, 0], f1, u1, h1)
            h2 = np.empty(8, dtype=np.uint64)
            dense(h1, f2, u2, h2)
            dense_matches(h2, f3, result[n])

    _compiled = network
    return network


def fc3_popcounts(packed: PackedModel, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"expected uint8 images of shape (N, 32, 32, 3), got {images.dtype} {images.shape}")
    network = _compile()
    q = _Q17[images]
    result = np.zeros((len(images), 10), dtype=np.int64)
    conv_args = [a for weights, thresholds in packed.convs for a in (weights, thresholds)]
    (f1, u1), (f2, u2), (f3, _) = packed.fcs
    network(q, packed.conv1_weights, packed.conv1_thresholds, *conv_args, f1, u1, f2, u2, f3, result)
    return result


def classify(packed: PackedModel, images: np.ndarray) -> np.ndarray:
    return np.argmax(fc3_popcounts(packed, images), axis=1)
