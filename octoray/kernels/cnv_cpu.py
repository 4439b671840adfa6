"""The fast CPU kernel for CNV-W1A1: bit-packed XNOR-popcount convolutions in numba.

Activations after conv1 are bits, 64 channels to a uint64 word.  A binary layer's output
channel fires when its number of mismatches ``sum popcount(x ^ w)`` over the window is below
``64 K - T + 1`` (``K`` words, ``T`` the threshold on the matches); 2x2 max-pooling is an OR.

Two code paths, chosen when the kernels are first compiled:

- AVX2 (the fast one): small LLVM IR generators (numba ``@intrinsic``), inlined into the
  numba loops.  Binary layers run vectorised across output channels, four channels to a
  256-bit register and 16 per pass; the popcount is two ``vpshufb`` nibble-table lookups
  per word whose byte counts add up over the window (at most 31 words) before one
  ``vpsadbw``.  Activations and weights are stored split into low and high nibbles
  (``x & 0x0f..``, ``(x >> 4) & 0x0f..``), so the inner loop is just xor, lookup, add;
  the threshold compare and the bit packing are fused (``vpcmpgtq`` + ``vmovmskpd``), and
  the OR-pooling is folded into the conv2/conv4 stores.  conv1 runs on the unsigned
  bytes u = q + 128 with ``vpmaddubsw`` (two taps x 16 channels an instruction; the
  offset 128 sum(w) is folded into the thresholds).
- Portable: the same loops with scalar ``llvm.ctpop`` and int32 conv1, for CPUs (or
  ``NUMBA_CPU_NAME`` settings) without AVX2.

The jitted function releases the GIL; a batch is cut into chunks of 32 images that
``numba.get_num_threads()`` Python threads take in turn.  Everything is compiled on first
use and cached on disk (``cache=True``); importing this module does not import numba.
Results equal octoray.kernels.cnv_reference exactly (tests/test_cnv_kernels.py).
"""

from __future__ import annotations

import os
import threading

import numpy as np

from octoray.formats.cnv_input import PIXEL_TO_Q17
from octoray.formats.cnv_model import CONV_SHAPES, FC_SHAPES, CnvModel, fan_in

_U8 = (np.array(PIXEL_TO_Q17, dtype=np.int16) + 128).astype(np.uint8)  # u = q + 128, 0..255
_LO = np.uint64(0x0F0F0F0F0F0F0F0F)
_REGISTERS = 4  # accumulator registers per pass of a binary layer (4 x 4 channels; 8 spills)
_CACHE = True  # tests and experiments may turn the disk cache off
_CONV1_LIMIT = 27 * 128 + 1  # |conv1 acc| <= 27 * 128: thresholds beyond this are equivalent


def _words(bits_by_input: np.ndarray) -> np.ndarray:
    """(..., C) bits (C a multiple of 64) -> (..., C/64) uint64, bit i of word j = input 64j+i."""
    packed = np.packbits(bits_by_input.astype(bool), axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8")


def _nibbles(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (np.ascontiguousarray(words & _LO), np.ascontiguousarray((words >> np.uint64(4)) & _LO))


class PackedModel:
    """The model's weights rearranged for the kernel.

    Binary layers: ``(K words, Cout)`` uint64 (transposed, so that consecutive output
    channels are adjacent), split into low and high nibbles, and per channel the largest
    number of mismatches plus one that still fires (``64 K - T + 1``, int64).
    """

    def __init__(self, model: CnvModel):
        w1 = model.weights_pm1("conv1")  # (64, 27), (kh, kw, cin) order
        # conv1 runs on u = q + 128 (unsigned bytes): sum(q w) >= T <=> sum(u w) >= T + 128 sum(w).
        # Taps in pairs for vpmaddubsw: per window row (dy) the 9 taps (dx, cin) as pairs
        # (0,1) (2,3) (4,5) (6,7) (8,-), the missing one with weight 0: (15, 64, 2) int8
        taps = np.zeros((3, 10, 64), dtype=np.int8)
        taps[:, :9] = w1.T.reshape(3, 9, 64)
        self.conv1_weights = np.ascontiguousarray(taps.reshape(3, 5, 2, 64).transpose(0, 1, 3, 2).reshape(15, 64, 2))
        t1 = np.clip(model.thresholds["conv1"].astype(np.int64), -_CONV1_LIMIT, _CONV1_LIMIT)
        self.conv1_thresholds = (t1 + 128 * w1.sum(axis=1, dtype=np.int64)).astype(np.int16)
        self.u8 = _U8.copy()
        self.layers = []  # (weights lo, weights hi, mismatch limit) for conv2..conv6, fc1, fc2
        for name in list(CONV_SHAPES)[1:] + ["fc1", "fc2"]:
            cout = (CONV_SHAPES.get(name) or FC_SHAPES[name])[1]
            words = _words(model.weights_pm1(name) > 0).reshape(cout, fan_in(name) // 64)
            lo, hi = _nibbles(np.ascontiguousarray(words.T))
            limit = fan_in(name) - model.thresholds[name].astype(np.int64) + 1
            self.layers.append((lo, hi, np.ascontiguousarray(limit)))
        self.fc3_weights = _words(model.weights_pm1("fc3") > 0)  # (10, 8)
        assert all(fan_in(n) % 64 == 0 for n in ("fc1", "fc2", "fc3"))

    def arguments(self) -> tuple:
        flat = [a for layer in self.layers for a in layer]
        return (self.u8, self.conv1_weights, self.conv1_thresholds, *flat, self.fc3_weights)


_compiled = None


def _has_avx2() -> bool:
    from llvmlite import binding
    from numba.core import config

    if config.CPU_NAME is not None:  # a portable build asked for: trust only its feature list
        return "+avx2" in (config.CPU_FEATURES or "")
    return binding.get_host_cpu_features().get("avx2", False)


def _intrinsics():
    """LLVM IR generators for the AVX2 path (numba ``@intrinsic``s, inlined where called).

    Returns (make_xnor, conv1_word); make_xnor(rows, row_len, n_out) gives the generator
    for one binary layer's shape, its loops over the window unrolled."""
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.core.errors import TypingError
    from numba.core.extending import intrinsic

    i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
    v32i8, v4i64, v16i16 = ir.VectorType(i8, 32), ir.VectorType(i64, 4), ir.VectorType(i16, 16)

    def splat(builder, value, vtype):
        single = builder.insert_element(ir.Constant(vtype, ir.Undefined), value, i32(0))
        return builder.shuffle_vector(single, ir.Constant(vtype, ir.Undefined),
                                      ir.Constant(ir.VectorType(i32, vtype.count), [0] * vtype.count))

    def vload(builder, base, index, vtype):
        pointer = builder.bitcast(builder.gep(base, [index]), vtype.as_pointer())
        return builder.load(pointer, align=vtype.element.width // 8)

    def unpack(context, builder, sig, args):
        return [context.make_array(t)(context, builder, v) if isinstance(t, types.Array) else v
                for t, v in zip(sig.args, args)]

    def contiguous(*arrays):
        for a in arrays:
            if not isinstance(a, types.Array) or a.layout != "C":
                raise TypingError(f"expected a C-contiguous array, got {a}")

    def make_xnor(rows, row_len, n_out):
        regs = _REGISTERS
        assert n_out % (4 * regs) == 0 and row_len <= 31
        flush_every_row = rows * row_len > 31  # byte counters hold at most 31 words' counts

        @intrinsic
        def xnor_pixel(typingctx, alo, ahi, base, row_stride, wlo, whi, limit, olo, ohi, out_index):
            """One output position of a binary layer, all n_out channels.

            The input words are `rows` runs of `row_len` consecutive words, run r at
            base + r * row_stride in alo/ahi (low/high nibbles); wlo/whi: (rows * row_len,
            n_out).  Channel c fires iff sum popcount(x ^ w[:, c]) < limit[c]; its bit is
            ORed into word out_index of olo/ohi (as nibbles)."""
            contiguous(alo, ahi, wlo, whi, limit, olo, ohi)
            sig = types.void(alo, ahi, types.intp, types.intp, wlo, whi, limit, olo, ohi, types.intp)

            def codegen(context, builder, sig, args):
                alo, ahi, base, row_stride, wlo, whi, limit, olo, ohi, out_index = unpack(
                    context, builder, sig, args)
                module = builder.module
                pshufb = cgutils.get_or_insert_function(
                    module, ir.FunctionType(v32i8, [v32i8, v32i8]), "llvm.x86.avx2.pshuf.b")
                psadbw = cgutils.get_or_insert_function(
                    module, ir.FunctionType(v4i64, [v32i8, v32i8]), "llvm.x86.avx2.psad.bw")
                table = ir.Constant(v32i8, [bin(i).count("1") for i in range(16)] * 2)
                zero8 = ir.Constant(v32i8, None)
                with cgutils.for_range(builder, i64(n_out // (4 * regs))) as block_loop:
                    c0 = builder.mul(block_loop.index, i64(4 * regs))
                    sums = [zero8] * regs  # regs registers x 4 channels per pass
                    counts = [ir.Constant(v4i64, None)] * regs
                    for r in range(rows):
                        start = builder.add(base, builder.mul(i64(r), row_stride))
                        for k in range(row_len):
                            at = builder.add(start, i64(k))
                            x_lo = splat(builder, builder.load(builder.gep(alo.data, [at])), v4i64)
                            x_hi = splat(builder, builder.load(builder.gep(ahi.data, [at])), v4i64)
                            w_at = builder.add(c0, i64((r * row_len + k) * n_out))
                            for j in range(regs):
                                idx = builder.add(w_at, i64(4 * j))
                                m_lo = builder.xor(x_lo, vload(builder, wlo.data, idx, v4i64))
                                m_hi = builder.xor(x_hi, vload(builder, whi.data, idx, v4i64))
                                p_lo = builder.call(pshufb, [table, builder.bitcast(m_lo, v32i8)])
                                p_hi = builder.call(pshufb, [table, builder.bitcast(m_hi, v32i8)])
                                sums[j] = builder.add(sums[j], builder.add(p_lo, p_hi))
                        if flush_every_row or r == rows - 1:
                            counts = [builder.add(c, builder.call(psadbw, [s, zero8]))
                                      for c, s in zip(counts, sums)]
                            sums = [zero8] * regs
                    word = i32(0)
                    for j in range(regs):
                        bound = vload(builder, limit.data, builder.add(c0, i64(4 * j)), v4i64)
                        fires = builder.icmp_signed("<", counts[j], bound)
                        bits = builder.zext(builder.bitcast(fires, ir.IntType(4)), i32)
                        word = builder.or_(word, builder.shl(bits, i32(4 * j)))
                    # the 4 * regs bits of this pass go to bit c0 % 64 of word out_index + c0 / 64
                    unit = ir.IntType(4 * regs)
                    word = builder.trunc(word, unit)
                    part = builder.add(builder.mul(out_index, i64(64 // (4 * regs))), block_loop.index)
                    mask = unit(int("00001111" * (regs // 2), 2))
                    for data, shift in ((olo.data, 0), (ohi.data, 4)):
                        pointer = builder.gep(builder.bitcast(data, unit.as_pointer()), [part])
                        value = builder.and_(builder.lshr(word, unit(shift)), mask)
                        builder.store(builder.or_(builder.load(pointer), value), pointer)
                return context.get_dummy_value()

            return sig, codegen

        return xnor_pixel

    @intrinsic
    def conv1_word(typingctx, u, offset, weights, thresholds):
        """conv1 at one position: u the image as unsigned bytes q + 128 (flat, padded),
        offset = (32 y + x) * 3; weights (15, 64, 2) int8 tap pairs.  Returns the 64 bits
        sum(u w) >= T' as a uint64: vpmaddubsw, 16 channels x 2 taps a register."""
        contiguous(u, weights, thresholds)
        sig = types.uint64(u, types.intp, weights, thresholds)

        def codegen(context, builder, sig, args):
            u, offset, weights, thresholds = unpack(context, builder, sig, args)
            pmaddubsw = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(v16i16, [v32i8, v32i8]), "llvm.x86.avx2.pmadd.ub.sw")
            accs = [ir.Constant(v16i16, None) for _ in range(4)]
            for dy in range(3):
                for pair in range(5):
                    at = builder.gep(u.data, [builder.add(offset, i64(96 * dy + 2 * pair))])
                    two = builder.load(builder.bitcast(at, i16.as_pointer()), align=1)
                    two = builder.bitcast(splat(builder, two, v16i16), v32i8)
                    for j in range(4):
                        w = vload(builder, weights.data, i64(128 * (5 * dy + pair) + 32 * j), v32i8)
                        accs[j] = builder.add(accs[j], builder.call(pmaddubsw, [two, w]))
            word = i64(0)
            for j in range(4):
                t = vload(builder, thresholds.data, i64(16 * j), v16i16)
                bits = builder.zext(builder.bitcast(builder.icmp_signed(">=", accs[j], t), i16), i64)
                word = builder.or_(word, builder.shl(bits, i64(16 * j)))
            return word

        return sig, codegen

    return make_xnor, conv1_word


def _compile():
    """Build the numba kernels on first use (importing numba costs 0.2-0.4 s)."""
    global _compiled
    if _compiled is None:
        _compiled = _build(_has_avx2())
    return _compiled


def _popcount_intrinsic():
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.core.extending import intrinsic

    @intrinsic
    def popcount(typingctx, x):
        sig = types.int64(types.uint64)

        def codegen(context, builder, sig, args):
            i64 = ir.IntType(64)
            ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64]), "llvm.ctpop.i64")
            return builder.call(ctpop, [args[0]])

        return sig, codegen

    return popcount


# The numba functions are plain module-level functions jitted by _build() with a namespace
# that binds the names below (xnor_pixel, conv1_word, binary_conv, popcount) to one code
# path's implementations; each path gets its own function names, so its own disk cache.

def _portable_xnor_pixel(alo, ahi, base, row_stride, wlo, whi, limit, olo, ohi, out_index):
    """numba version of the AVX2 xnor_pixel generator (same arguments, same results)."""
    n_words, n_out = wlo.shape
    rows = 3 if row_stride != 0 else 1
    row_len = n_words // rows
    for word in range(n_out // 64):
        lo, hi = np.uint64(0), np.uint64(0)
        for bit in range(64):
            c = 64 * word + bit
            mismatches = 0
            for r in range(rows):
                start = base + r * row_stride
                for k in range(row_len):
                    x = alo[start + k] | (ahi[start + k] << np.uint64(4))
                    i = r * row_len + k
                    w = wlo[i, c] | (whi[i, c] << np.uint64(4))
                    mismatches += popcount(x ^ w)  # noqa: F821 (bound by _build)
            if mismatches < limit[c]:
                if bit % 8 < 4:
                    lo |= np.uint64(1) << np.uint64(bit)
                else:
                    hi |= np.uint64(1) << np.uint64(bit - 4)
        olo[out_index + word] |= lo
        ohi[out_index + word] |= hi


def _portable_conv1_word(u, offset, weights, thresholds):
    """numba version of the AVX2 conv1_word generator."""
    word = np.uint64(0)
    for c in range(64):
        acc = 0
        for dy in range(3):
            for pair in range(5):
                for t in range(2):
                    acc += np.int32(u[offset + 96 * dy + 2 * pair + t]) * np.int32(weights[5 * dy + pair, c, t])
        if acc >= thresholds[c]:
            word |= np.uint64(1) << np.uint64(c)
    return word


def _binary_conv(alo, ahi, wlo, whi, limit, olo, ohi, pool):
    """A 3x3 binary convolution.  alo/ahi: (H, W, Win) nibbles of the input; olo/ohi, zeroed
    by the caller: (H-2, W-2, Cout/64), or when pool the 2x2-pooled (H/2-1, W/2-1, Cout/64)."""
    h, w, win = alo.shape
    fa_lo, fa_hi = alo.reshape(-1), ahi.reshape(-1)
    fo_lo, fo_hi = olo.reshape(-1), ohi.reshape(-1)
    out_w, words = olo.shape[1], olo.shape[2]
    for y in range(h - 2):
        for x in range(w - 2):
            if pool:
                index = ((y >> 1) * out_w + (x >> 1)) * words
            else:
                index = (y * out_w + x) * words
            xnor_pixel(fa_lo, fa_hi, (y * w + x) * win, w * win, wlo, whi, limit,  # noqa: F821
                       fo_lo, fo_hi, index)


def _run_images(images, u8, w1, t1, w2l, w2h, l2, w3l, w3h, l3, w4l, w4h, l4, w5l, w5h, l5,
                w6l, w6h, l6, f1l, f1h, m1, f2l, f2h, m2, f3, result, first, stop):
    """The whole network on images[first:stop], one after the other."""
    lo_mask = np.uint64(0x0F0F0F0F0F0F0F0F)
    u = np.zeros(3072 + 32, dtype=np.uint8)  # padded: conv1 reads a byte past the image
    a1l = np.empty((30, 30, 1), dtype=np.uint64)
    a1h = np.empty((30, 30, 1), dtype=np.uint64)
    p2l = np.empty((14, 14, 1), dtype=np.uint64)
    p2h = np.empty((14, 14, 1), dtype=np.uint64)
    a3l = np.empty((12, 12, 2), dtype=np.uint64)
    a3h = np.empty((12, 12, 2), dtype=np.uint64)
    p4l = np.empty((5, 5, 2), dtype=np.uint64)
    p4h = np.empty((5, 5, 2), dtype=np.uint64)
    a5l = np.empty((3, 3, 4), dtype=np.uint64)
    a5h = np.empty((3, 3, 4), dtype=np.uint64)
    a6l = np.empty((1, 1, 4), dtype=np.uint64)
    a6h = np.empty((1, 1, 4), dtype=np.uint64)
    h1l = np.empty((1, 1, 8), dtype=np.uint64)
    h1h = np.empty((1, 1, 8), dtype=np.uint64)
    h2l = np.empty((1, 1, 8), dtype=np.uint64)
    h2h = np.empty((1, 1, 8), dtype=np.uint64)
    for n in range(first, stop):
        image = images[n].reshape(-1)
        for i in range(3072):
            u[i] = u8[image[i]]
        for y in range(30):
            for x in range(30):
                word = conv1_word(u, (32 * y + x) * 3, w1, t1)  # noqa: F821
                a1l[y, x, 0] = word & lo_mask
                a1h[y, x, 0] = (word >> np.uint64(4)) & lo_mask
        for buf in (p2l, p2h, a3l, a3h, p4l, p4h, a5l, a5h, a6l, a6h, h1l, h1h, h2l, h2h):
            buf[:] = 0
        conv2(a1l, a1h, w2l, w2h, l2, p2l, p2h, True)  # noqa: F821
        conv3(p2l, p2h, w3l, w3h, l3, a3l, a3h, False)  # noqa: F821
        conv4(a3l, a3h, w4l, w4h, l4, p4l, p4h, True)  # noqa: F821
        conv5(p4l, p4h, w5l, w5h, l5, a5l, a5h, False)  # noqa: F821
        conv6(a5l, a5h, w6l, w6h, l6, a6l, a6h, False)  # noqa: F821
        fc1(a6l.reshape(-1), a6h.reshape(-1), 0, 0, f1l, f1h, m1,  # noqa: F821
            h1l.reshape(-1), h1h.reshape(-1), 0)
        fc2(h1l.reshape(-1), h1h.reshape(-1), 0, 0, f2l, f2h, m2,  # noqa: F821
            h2l.reshape(-1), h2h.reshape(-1), 0)
        for c in range(10):
            matches = 0
            for j in range(8):
                x = h2l[0, 0, j] | (h2h[0, 0, j] << np.uint64(4))
                matches += 64 - popcount(x ^ f3[c, j])  # noqa: F821
            result[n, c] = matches


def _build(avx2: bool):
    """Jit the network for one code path; returns the numba dispatcher."""
    import types

    from numba import njit

    base = dict(globals(), popcount=_popcount_intrinsic())
    path = "avx2" if avx2 else "portable"

    def jit(func, name, namespace, **options):
        # a copy of func named for the code path and layer, resolving globals in namespace
        copy = types.FunctionType(func.__code__, namespace, f"{func.__name__}_{name}_{path}")
        copy.__qualname__ = copy.__name__
        copy.__module__ = func.__module__
        return njit(cache=_CACHE, **options)(copy)

    if avx2:
        make_xnor, base["conv1_word"] = _intrinsics()
    else:
        xnor = jit(_portable_xnor_pixel, "any", base)
        make_xnor = lambda rows, row_len, n_out: xnor  # noqa: E731
        base["conv1_word"] = jit(_portable_conv1_word, "any", base)
    for name in list(CONV_SHAPES)[1:]:
        cin, cout = CONV_SHAPES[name]
        xnor_pixel = make_xnor(3, 3 * cin // 64, cout)
        base[name] = jit(_binary_conv, name, dict(base, xnor_pixel=xnor_pixel))
    for name in ("fc1", "fc2"):
        base[name] = make_xnor(1, fan_in(name) // 64, FC_SHAPES[name][1])
    return jit(_run_images, "cnv", base, nogil=True)


def fc3_popcounts(packed: PackedModel, images: np.ndarray) -> np.ndarray:
    """(N, 10) fc3 popcounts, equal to cnv_reference.fc3_popcounts.  Runs on
    ``numba.get_num_threads()`` threads (at most one per CPU)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"expected uint8 images of shape (N, 32, 32, 3), got {images.dtype} {images.shape}")
    run = _compile()
    images = np.ascontiguousarray(images)
    result = np.zeros((len(images), 10), dtype=np.int64)
    arguments = packed.arguments()
    chunks = [(first, min(first + _CHUNK, len(images))) for first in range(0, len(images), _CHUNK)]
    import numba

    threads = min(numba.get_num_threads(), os.cpu_count() or 1, len(chunks))
    if threads <= 1:
        run(images, *arguments, result, 0, len(images))
        return result
    # the jitted function releases the GIL: threads pull chunks until none is left
    todo = iter(chunks)
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                chunk = next(todo, None)
            if chunk is None:
                return
            run(images, *arguments, result, *chunk)

    pool = _pool(threads - 1)
    helpers = [pool.submit(work) for _ in range(threads - 1)]
    work()
    for helper in helpers:
        helper.result()
    return result


_CHUNK = 32  # images a thread takes at a time (~5 ms of work)
_executor = None


def _pool(workers: int):
    global _executor
    if _executor is None or _executor._max_workers < workers:
        from concurrent.futures import ThreadPoolExecutor

        _executor = ThreadPoolExecutor(max_workers=max(workers, (os.cpu_count() or 2) - 1),
                                       thread_name_prefix="cnv_cpu")
    return _executor


def classify(packed: PackedModel, images: np.ndarray) -> np.ndarray:
    return np.argmax(fc3_popcounts(packed, images), axis=1)
