"""The fast CPU kernel for CNV-W1A1: the network in a small C extension (``_cnv_native.c``).

Why C and not a JIT: fclassify is a short-lived process, and its rate on a directory of
JPEGs counts the start-up, which a JIT's import and code loading would dominate
(docs/design.md).

Why this algorithm: after conv1 every activation and weight is a bit, so a binary layer
is a count of mismatching bits, and CPUs without AVX-512 have no vector popcount.  The
AVX2 path stores weights as nibbles, one output channel a byte, and picks for each input
nibble one of 16 lookup tables (the popcount of v ^ i for its value v): one ``vpshufb``
then gives 32 channels' mismatch counts for that nibble, and the inner loop is a table
load, a lookup and a byte add, with no xor and no per-channel horizontal sums.  Each
block of output channels runs over every position of a layer, a few positions at a time
sharing the loaded weights, so that the block's weights stay in L1 (the whole model,
~0.6 MB here, does not).  conv1 keeps its 8-bit input and uses ``vpmaddubsw`` on
u = q + 128 (the offset folded into the thresholds).  A portable scalar path covers
other CPUs; ``OCTORAY_CNV_PORTABLE=1`` forces it (the tests run both).

Why threads: the C code releases the GIL, so a batch is cut into chunks of 32 images
that threads take in turn.  The engine itself runs batches concurrently on its own
threads, so concurrent calls share the run's thread budget (octoray.threads: about
budget / k threads each for k calls) rather than each taking all of the CPUs.

Results equal octoray.kernels.cnv_reference exactly (tests/test_cnv_kernels.py).
"""

from __future__ import annotations

import os
import threading

import numpy as np

from octoray import threads
from octoray.formats.cnv_input import PIXEL_TO_Q17
from octoray.formats.cnv_model import CONV_SHAPES, FC_SHAPES, CnvModel, fan_in
from octoray.kernels import _cnv_native

_CONV1_LIMIT = 27 * 128 + 1  # |conv1 acc| <= 27 * 128: thresholds beyond this are equivalent
_BINARY = list(CONV_SHAPES)[1:] + ["fc1", "fc2"]


def _bytes(model: CnvModel, name: str) -> np.ndarray:
    """(Cout, K/8) the layer's weight bits as stored (bit i of byte j = input 8j + i),
    for the layers whose fan-in is a multiple of 64 (so rows are whole words)."""
    assert fan_in(name) % 64 == 0
    return np.ascontiguousarray(model.weight_bits[name], dtype=np.uint8)


def _conv1_lane_channels() -> np.ndarray:
    """(4, 16): the channel each int16 lane of the four conv1 accumulators holds, chosen so
    that vpacksswb(r0, r1), vpacksswb(r2, r3) and vpmovmskb give channel b at bit b."""
    channels = np.empty((4, 16), dtype=np.int64)
    for b in range(64):
        channels[2 * (b // 32) + (b % 16 >= 8), 8 * ((b % 32) // 16) + b % 8] = b
    return channels


class PackedModel:
    """The model as the one buffer the C kernel reads (``blob``, sections named in
    ``_cnv_native.LAYOUT``, 64-byte aligned):

    - ``u8``: the input table u = q + 128 (0..255) of each pixel value.
    - conv1, AVX2: ``conv1_pairs`` int8 (15, 4, 32), per window row and tap pair the 4
      registers of 16 channels x 2 taps (lanes in _conv1_lane_channels order, the tenth
      tap of a row 0), and ``conv1_pair_thresholds`` int16 (4, 16), T' - 1 in that order,
      where T' = T + 128 sum(w) is the threshold on sum(u w).
    - conv1, portable: ``conv1_taps`` int8 (64, 27) and ``conv1_thresholds`` int32 (64,) T'.
    - Binary layers (conv2..conv6, fc1, fc2), K words of input a channel:
      ``<name>_nibbles`` uint8 (Cout/B, K, 16, B), B = ``_cnv_native.BLOCKS[name]``: per
      block of B channels, input word and nibble t, each channel's weight nibble
      (w >> 4t) & 15; ``<name>_limits16`` int16 (Cout/32, 2, 16), per 32 channels the
      limits of channels 0-7 and 16-23, then 8-15 and 24-31 (the lane order of the
      kernel's 16-bit counts); ``<name>_words`` uint64 (Cout, K), the plain weight bits,
      and ``<name>_limits`` int64 (Cout,), for the portable path.  A channel fires iff
      its mismatches sum popcount(x ^ w) < 64 K - T + 1 (T clipped to 0 .. 64 K + 1).
    - ``fc3_words`` uint64 (10, 8).
    """

    def __init__(self, model: CnvModel):
        layout = _cnv_native.LAYOUT
        raw = np.zeros(_cnv_native.SIZE + 64, dtype=np.uint8)
        start = -raw.ctypes.data % 64
        self.blob = raw[start:start + _cnv_native.SIZE]

        def put(name: str, array: np.ndarray) -> None:
            offset, size = layout[name]
            data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
            if data.size != size:
                raise AssertionError(f"{name}: {data.size} bytes, the kernel expects {size}")
            self.blob[offset:offset + size] = data

        put("u8", (np.array(PIXEL_TO_Q17, dtype=np.int16) + 128).astype(np.uint8))
        w1 = model.weights_pm1("conv1").astype(np.int64)  # (64, 27), (kh, kw, cin) order
        t1 = np.clip(model.thresholds["conv1"].astype(np.int64), -_CONV1_LIMIT, _CONV1_LIMIT)
        t1 = t1 + 128 * w1.sum(axis=1)  # sum(q w) >= T <=> sum(u w) >= T + 128 sum(w)
        put("conv1_taps", w1.astype(np.int8))
        put("conv1_thresholds", t1.astype(np.int32))
        taps = np.zeros((64, 3, 10), dtype=np.int8)  # per row dy, the 9 taps (dx, c) and a zero
        taps[:, :, :9] = w1.reshape(64, 3, 9)
        lanes = _conv1_lane_channels()
        pairs = taps.reshape(64, 15, 2)[lanes]  # (4, 16, 15, 2): register, lane, pair, tap
        put("conv1_pairs", pairs.transpose(2, 0, 1, 3))
        put("conv1_pair_thresholds", (t1[lanes] - 1).astype(np.int16))
        for name in _BINARY:
            cout, k = (CONV_SHAPES.get(name) or FC_SHAPES[name])[1], fan_in(name) // 64
            block = _cnv_native.BLOCKS[name]
            bits = _bytes(model, name)
            words = bits.view("<u8").astype(np.uint64)  # (Cout, K), bit i of word j = input 64 j + i
            nibbles = np.stack([bits & 15, bits >> 4], axis=-1)  # nibble t of word j at 16 j + t
            put(f"{name}_nibbles", nibbles.reshape(cout // block, block, k, 16).transpose(0, 2, 3, 1))
            put(f"{name}_words", words)
            t = np.clip(model.thresholds[name].astype(np.int64), 0, fan_in(name) + 1)
            limits = fan_in(name) - t + 1  # 0 .. 64 K + 1
            put(f"{name}_limits", limits)
            lanes = limits.reshape(cout // 32, 2, 2, 8).transpose(0, 2, 1, 3)  # (0-7 16-23) (8-15 24-31)
            put(f"{name}_limits16", lanes.astype(np.int16))
        put("fc3_words", _bytes(model, "fc3").view("<u8").astype(np.uint64))


max_threads: int | None = None
"""Threads a call may use when it runs alone; None: the run's thread budget (octoray.threads)."""

_CHUNK = 32  # images a thread takes at a time: a few ms of work
_lock = threading.Lock()
_active = 0  # calls of fc3_popcounts running now, which share the CPUs
_executor = None


def _share() -> int:
    """Threads one call may run now (the caller's included); called under _lock.  Calls that
    run at once (the engine's workers) split the budget between them."""
    return max(1, (max_threads or threads.budget()) // max(1, _active))


def _pool():
    global _executor
    with _lock:
        if _executor is None:
            from concurrent.futures import ThreadPoolExecutor

            _executor = ThreadPoolExecutor(max_workers=max(2, max_threads or 0, threads.available_cpus()),
                                           thread_name_prefix="cnv_cpu")
        return _executor


def _portable() -> bool:
    return os.environ.get("OCTORAY_CNV_PORTABLE") == "1"


def code_path() -> str:
    """'avx2' or 'portable': the code path fc3_popcounts takes now."""
    return _cnv_native.code_path(_portable())


def fc3_popcounts(packed: PackedModel, images: np.ndarray) -> np.ndarray:
    """(N, 10) fc3 popcounts, equal to cnv_reference.fc3_popcounts."""
    global _active
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"expected uint8 images of shape (N, 32, 32, 3), got {images.dtype} {images.shape}")
    images = np.ascontiguousarray(images)
    n = len(images)
    result = np.zeros((n, 10), dtype=np.int64)
    portable = _portable()
    blob, run = packed.blob, _cnv_native.run
    with _lock:
        _active += 1
    try:
        if n <= _CHUNK:
            run(blob, images, result, 0, n, portable)
        else:
            _run_chunks(run, blob, images, result, portable)
    finally:
        with _lock:
            _active -= 1
    return result


def _run_chunks(run, blob, images, result, portable) -> None:
    n = len(images)
    # Chunks go to whoever asks next: this thread, and helpers while this call's share of
    # the CPUs allows them (a helper stops at a chunk boundary when other calls start, and
    # the caller adds helpers again when they finish).
    todo = iter(range(0, n, _CHUNK))
    helpers = 0
    futures = []

    def work(first: int) -> None:
        run(blob, images, result, first, min(first + _CHUNK, n), portable)

    def helper() -> None:
        nonlocal helpers
        while True:
            with _lock:
                first = next(todo, None) if helpers < _share() else None
                if first is None:
                    helpers -= 1
                    return
            work(first)

    def top_up() -> None:
        nonlocal helpers
        with _lock:
            extra = _share() - 1 - helpers
            helpers += max(0, extra)
        for _ in range(extra):
            futures.append(_pool().submit(helper))

    while True:
        top_up()
        with _lock:
            first = next(todo, None)
        if first is None:
            break
        work(first)
    for future in futures:
        future.result()


def classify(packed: PackedModel, images: np.ndarray) -> np.ndarray:
    return np.argmax(fc3_popcounts(packed, images), axis=1)
