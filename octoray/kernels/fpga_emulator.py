"""An emulator of the PYNQ 3.0.1 surface that octoray's FPGA drivers use, with emulated Alveo
cards whose kernels compute what the overlays in ``overlays/`` compute.

``OCTORAY_ACCELERATOR=fpga-emulator`` runs the real drivers (octoray.kernels.fpga) on it:

- ``Device.devices``: ``OCTORAY_EMULATED_DEVICES`` cards (default 2), all named after the
  overlays' shell, so that a card can only be chosen by index.  Probing them needs an event
  loop in the calling thread, as PYNQ's device constructor does.
- ``Overlay(xclbin, device=...)``: recognises an overlay by its xclbin's file name (the file
  itself need not exist), refuses one built for another shell, and reprograms the card: the
  overlay loaded before it stops working.  Kernels and memory banks are attributes.
- ``allocate(shape, dtype, target=...)``: numpy-backed buffers with a separate "device" copy;
  ``sync_to_device``/``flush`` and ``sync_from_device``/``invalidate`` copy between them,
  ``freebuffer`` frees.
- Kernels: ``call`` / ``start`` + ``wait``, ``signature``, ``register_map``.
  ``xilGzipCompBlock`` writes non-final raw deflate blocks (independent 32 KiB blocks, each
  ending with a sync flush) and the CRC-32 register, as the Vitis kernel does;
  ``xilLz77Compress`` + ``xilHuffmanKernel`` (the 2019.2 ``gzip_hbm`` pair) write LZ77
  tokens, frequencies and then a deflate block per 1 MiB slot with the byte counts, as the
  2019.2 kernels do (incompressible blocks larger than their slot included); FINN's
  ``idma0`` / ``odma0`` run the shipped CNV-W1A1 model on the packed input and write the top-1
  class indices.

It rejects, with :class:`EmulatorError`, what the hardware would reject or silently get wrong:
buffers not synced to the device before a kernel reads them, buffers of another card, bank,
shape or data type than the overlay's ports, freed buffers, sizes above the manifest's limits,
kernels of an overlay no longer loaded, an output DMA with no input (it would hang).

A throughput model lets scaling be measured without cards: ``OCTORAY_EMULATED_GZIP_MBPS=R``
(MB/s of input) and ``OCTORAY_EMULATED_CNV_IPS=R`` (images/s) make each gzip run or CNV batch
last at least its input divided by R, as a card of that speed would; the wait is a sleep (no
CPU, no GIL), the result is still computed.  Unset: as fast as the host computes it.
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
import types
import warnings
import zlib
from pathlib import Path

import numpy as np

DEFAULT_DEVICES = 2
DEVICES_ENV = "OCTORAY_EMULATED_DEVICES"
HBM_BANKS = 32
GZIP_RATE_ENV = "OCTORAY_EMULATED_GZIP_MBPS"
CNV_RATE_ENV = "OCTORAY_EMULATED_CNV_IPS"


def emulated_rate(name: str, scale: float = 1.0) -> float | None:
    """A card speed from the environment (units per second times `scale`), None when unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        rate = float(value) * scale
    except ValueError:
        raise EmulatorError(f"{name}={value!r} is not a number") from None
    if not rate > 0:
        raise EmulatorError(f"{name}={value!r} must be above 0")
    return rate


def pace(started: float, amount: float, rate: float | None) -> None:
    """Sleep until `amount` units at `rate` per second have passed since `started`."""
    if rate:
        left = started + amount / rate - time.monotonic()
        if left > 0:
            time.sleep(left)


class EmulatorError(RuntimeError):
    """A use of the emulated card that real hardware would reject, hang on or get wrong."""


def _require_event_loop() -> None:
    """What PYNQ's device constructor needs: ``asyncio.get_event_loop()`` must work here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            asyncio.get_event_loop()
        except RuntimeError:
            raise RuntimeError(
                f"There is no current event loop in thread {threading.current_thread().name!r}.") from None


# ---------------------------------------------------------------------------------------------
# Memory


class _Storage:
    """One allocation: its card, bank, device-side bytes and address."""

    _next_address = 0x4_0000_0000

    def __init__(self, device, bank: str, nbytes: int):
        self.device = device
        self.bank = bank
        self.nbytes = nbytes
        self.memory = np.full(max(nbytes, 1), 0xCD, dtype=np.uint8)  # device memory is not zeroed
        self.address = _Storage._next_address
        _Storage._next_address += (nbytes + 4095) // 4096 * 4096 + 4096
        self.freed = False

    def check(self, what: str = "buffer") -> None:
        if self.freed:
            raise EmulatorError(f"{what} was freed")


class EmulatedBuffer(np.ndarray):
    """A numpy array on the host side of a card buffer, like ``pynq.buffer.PynqBuffer``."""

    def __array_finalize__(self, obj):
        store = getattr(obj, "_store", None)
        self._store = store
        if store is not None:
            base_address = obj.__array_interface__["data"][0]
            self._offset = obj._offset + (self.__array_interface__["data"][0] - base_address)
        else:
            self._offset = 0

    coherent = False

    @property
    def device_address(self) -> int:
        return self._store.address + self._offset

    physical_address = device_address

    @property
    def bank(self) -> str:
        return self._store.bank

    def _range(self) -> tuple[int, np.ndarray]:
        if self._store is None:
            raise EmulatorError("not a card buffer (an array derived from one by computation)")
        self._store.check()
        if not self.flags["C_CONTIGUOUS"]:
            raise EmulatorError("only contiguous buffers and views can be synced")
        return self._offset, self.reshape(-1).view(np.uint8)

    def sync_to_device(self) -> None:
        offset, host = self._range()
        self._store.memory[offset:offset + host.size] = host
        self._store.device.emulator.stats["bytes_to_device"] += host.size

    def sync_from_device(self) -> None:
        offset, host = self._range()
        host[...] = self._store.memory[offset:offset + host.size]
        self._store.device.emulator.stats["bytes_from_device"] += host.size

    flush = sync_to_device
    invalidate = sync_from_device

    def freebuffer(self) -> None:
        if self._store is not None and not self._store.freed:
            self._store.freed = True
            self._store.device.emulator.stats["buffers_freed"] += 1

    def close(self) -> None:
        self.freebuffer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.freebuffer()
        return False


class EmulatedMemory:
    """A memory bank of a card (``ol.HBM0``); ``pynq.allocate(..., target=bank)``."""

    def __init__(self, device, name: str):
        self.device = device
        self.name = name

    def allocate(self, shape, dtype, **kwargs) -> EmulatedBuffer:
        return self.device._allocate(shape, dtype, self.name)

    def __repr__(self):
        return f"<emulated memory {self.name} of card {self.device.index}>"


# ---------------------------------------------------------------------------------------------
# Cards


class _DeviceClass(type):
    @property
    def devices(cls) -> list:
        with cls._emulator.lock:
            if cls._devices is None:
                _require_event_loop()
                cls._devices = [cls(i) for i in range(cls._count)]
                if cls.active_device is None and cls._devices:
                    cls.active_device = cls._devices[0]
            return list(cls._devices)


class EmulatedDevice:
    _emulator: "EmulatedPynq"
    _count = 0
    _devices = None
    active_device = None

    def __init__(self, index: int):
        self.index = index
        self.emulator = self._emulator
        self.name = self.emulator.shell
        self.loaded = None
        self.memories = {f"HBM{i}": EmulatedMemory(self, f"HBM{i}") for i in range(HBM_BANKS)}

    def _allocate(self, shape, dtype, bank: str) -> EmulatedBuffer:
        dtype = np.dtype(dtype)
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        array = np.zeros(shape, dtype=dtype)
        buffer = array.view(EmulatedBuffer)
        buffer._store = _Storage(self, bank, array.nbytes)
        buffer._offset = 0
        self.emulator.stats["buffers_allocated"] += 1
        return buffer

    def allocate(self, shape, dtype, **kwargs) -> EmulatedBuffer:
        return self._allocate(shape, dtype, "HBM0")

    def __repr__(self):
        return f"<emulated {self.name} #{self.index}>"


# ---------------------------------------------------------------------------------------------
# Kernels


class _Handle:
    def __init__(self, finish=None):
        self._finish = finish
        self._done = finish is None

    @property
    def done(self) -> bool:
        return self._done

    def wait(self) -> None:
        if not self._done:
            self._finish()
            self._done = True


class _Kernel:
    arguments: tuple[str, ...] = ()

    def __init__(self, overlay: "EmulatedOverlay", name: str):
        self.overlay = overlay
        self.name = name
        self.manifest = overlay.manifest
        self.register_map = types.SimpleNamespace(**{a: 0 for a in self.arguments})
        self.signature = f"{name}({', '.join(self.arguments)})"

    def call(self, *args):
        self.start(*args).wait()

    def start(self, *args, waitfor=None) -> _Handle:
        self.overlay._check_loaded(self.name)
        if len(args) != len(self.arguments):
            raise EmulatorError(f"{self.name} takes {len(self.arguments)} arguments "
                                f"({', '.join(self.arguments)}), got {len(args)}")
        for name, value in zip(self.arguments, args):
            setattr(self.register_map, name, value.device_address if isinstance(value, EmulatedBuffer) else value)
        self.overlay.emulator.stats[f"runs:{self.name}"] += 1
        return self._run(*args)

    def _run(self, *args) -> _Handle:
        raise NotImplementedError

    # checks shared by the kernels
    def _spec_buffer(self, port: str, value, spec: dict) -> EmulatedBuffer:
        """`value` checked against a manifest buffer spec (dtype, shape, its own bank if given)."""
        return self._buffer(port, value, spec["dtype"], spec["shape"], bank=spec.get("memory"))

    def _buffer(self, port: str, value, dtype=None, shape=None, bank=None) -> EmulatedBuffer:
        if not isinstance(value, EmulatedBuffer) or value._store is None:
            raise EmulatorError(f"{self.name}.{port}: expected a buffer from pynq.allocate, got {type(value).__name__}")
        value._store.check(f"{self.name}.{port}'s buffer")
        if value._store.device is not self.overlay.device:
            raise EmulatorError(f"{self.name}.{port}: buffer is on card {value._store.device.index}, "
                                f"the kernel on card {self.overlay.device.index}")
        bank = bank or self.manifest.get("memory")
        if bank and value._store.bank != bank:
            raise EmulatorError(f"{self.name}.{port} is connected to {bank}, the buffer is in {value._store.bank}")
        if dtype is not None and value.dtype != np.dtype(dtype):
            raise EmulatorError(f"{self.name}.{port}: expected {np.dtype(dtype)}, got {value.dtype}")
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise EmulatorError(f"{self.name}.{port}: expected shape {tuple(shape)}, got {tuple(value.shape)}")
        return value

    def _read(self, port: str, buffer: EmulatedBuffer, nbytes: int) -> np.ndarray:
        """Device bytes the kernel reads, refusing host changes never synced to the device."""
        if nbytes > buffer.nbytes:
            raise EmulatorError(f"{self.name}.{port}: reads {nbytes} bytes past a {buffer.nbytes}-byte buffer")
        start = buffer._offset
        device = buffer._store.memory[start:start + nbytes]
        host = buffer.reshape(-1).view(np.uint8)[:nbytes]
        if not np.array_equal(device, host):
            raise EmulatorError(f"{self.name}.{port}: the buffer was written on the host but not synced to "
                                f"the device (sync_to_device / flush) before the kernel ran")
        return device.copy()

    def _device(self, buffer: EmulatedBuffer, nbytes: int, offset: int = 0) -> np.ndarray:
        """Device bytes a kernel reads that the card itself wrote (no host copy to compare)."""
        if offset + nbytes > buffer.nbytes:
            raise EmulatorError(f"{self.name}: reads {nbytes} bytes at {offset} past a {buffer.nbytes}-byte buffer")
        start = buffer._offset + offset
        return buffer._store.memory[start:start + nbytes].copy()

    def _write(self, port: str, buffer: EmulatedBuffer, data: bytes | np.ndarray, offset: int = 0) -> None:
        if isinstance(data, np.ndarray):
            data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        else:
            data = np.frombuffer(bytes(data), dtype=np.uint8)
        if offset + data.size > buffer.nbytes:
            raise EmulatorError(f"{self.name}.{port}: {data.size} bytes at {offset} overflow a {buffer.nbytes}-byte "
                                f"buffer (the card would overwrite the memory after it)")
        start = buffer._offset + offset
        buffer._store.memory[start:start + data.size] = data

    def _scalar(self, port: str, value, low: int, high: int) -> int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise EmulatorError(f"{self.name}.{port}: expected an integer, got {value!r}")
        if not low <= int(value) <= high:
            raise EmulatorError(f"{self.name}.{port}={value} is outside {low}..{high}")
        return int(value)


class GzipCompBlockKernel(_Kernel):
    """Vitis ``xilGzipCompBlock(in, out, compressd_size*, checksumData*, uint input_size,
    bool checksumType)``: independent 32 KiB deflate blocks, non-final, each ending byte-aligned
    (a sync flush); ``compressd_size[0]`` = bytes written; ``checksumData[0]`` = the CRC-32
    register after the data (start value in, gzip) or Adler-32 (zlib)."""

    arguments = ("in", "out", "compressd_size", "checksumData", "input_size", "checksumType")

    def _run(self, src, dst, sizes, checksum, input_size, checksum_type) -> _Handle:
        started = time.monotonic()
        specs = self.manifest["buffers"]
        src = self._buffer("in", src, specs["in"]["dtype"], specs["in"]["shape"])
        dst = self._buffer("out", dst, specs["out"]["dtype"], specs["out"]["shape"])
        sizes = self._buffer("compressd_size", sizes, specs["compressd_size"]["dtype"], specs["compressd_size"]["shape"])
        checksum = self._buffer("checksumData", checksum, specs["checksumData"]["dtype"], specs["checksumData"]["shape"])
        n = self._scalar("input_size", input_size, 1, int(self.manifest["max_input_bytes"]))
        if not isinstance(checksum_type, (bool, np.bool_, int, np.integer)):
            raise EmulatorError(f"{self.name}.checksumType: expected a bool, got {checksum_type!r}")
        data = self._read("in", src, n).tobytes()
        register = int(self._read("checksumData", checksum, 4).view("<u4")[0])
        block = int(self.manifest.get("block_size", 32768))
        from isal import isal_zlib

        compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -15)
        out = []
        for start in range(0, n, block):  # each block on its own: no match reaches into the previous one
            out.append(compressor.compress(data[start:start + block]))
            out.append(compressor.flush(isal_zlib.Z_FULL_FLUSH))
        body = b"".join(out)
        self._write("out", dst, body)
        size_words = np.zeros(2, dtype="<u4")
        size_words[0] = len(body)
        self._write("compressd_size", sizes, size_words)
        if checksum_type:  # the register runs uninverted: start ~0, the CRC is its complement
            result = ~zlib.crc32(data, ~register & 0xFFFFFFFF) & 0xFFFFFFFF
        else:
            result = zlib.adler32(data, register)
        self._write("checksumData", checksum, np.array([result], dtype="<u4"))
        pace(started, n, self.overlay.emulator.gzip_rate)
        return _Handle()


class _Lz77HuffmanState:
    """What xilLz77Compress left in its buffers for xilHuffmanKernel (the emulator's record of
    device memory the card wrote, so that the Huffman kernel can refuse a run no LZ77 run fed)."""

    def __init__(self, stores: dict, input_size: int, block: int, lengths: list[int]):
        self.stores = stores
        self.input_size = input_size
        self.block = block
        self.lengths = lengths


class Lz77CompressKernel(_Kernel):
    """Vitis 2019.2 ``xilLz77Compress(in, out, compressd_size*, in_block_size*, dyn_ltree_freq*,
    dyn_dtree_freq*, uint block_size_in_kb, uint input_size)``.

    Reads ``in_block_size[b]`` (host-written block lengths) for the ceil(input_size / block)
    blocks, LZ77-codes block b of ``in`` (from ``in[b * block]``) into 32-bit tokens at
    ``out[4 * block * b]`` (bits 7:0 literal, 15:8 match length, 31:16 distance; the emulator
    finds no matches, so every token is a literal: its own, valid, representation), writes the
    token bytes into ``compressd_size[b]`` and the block's literal/length frequencies into
    ``dyn_ltree_freq[1024 * b:]`` (distance ones into ``dyn_dtree_freq[64 * b:]``).  A block
    under 128 bytes is not coded: its size is reported as its length, nothing is written (as
    the 2019.2-era source does)."""

    arguments = ("in", "out", "compressd_size", "in_block_size", "dyn_ltree_freq", "dyn_dtree_freq",
                 "block_size_in_kb", "input_size")
    MIN_BLOCK = 128

    def _run(self, src, lz77, sizes, lengths, ltree, dtree, block_kb, input_size) -> _Handle:
        started = time.monotonic()  # the pair's time is charged here (the Huffman pass follows)
        specs = self.manifest["buffers"]
        src = self._spec_buffer("in", src, specs["in"])
        lz77 = self._spec_buffer("out", lz77, specs["lz77_out"])
        sizes = self._spec_buffer("compressd_size", sizes, specs["compressd_size"])
        lengths_buf = self._spec_buffer("in_block_size", lengths, specs["in_block_size"])
        ltree = self._spec_buffer("dyn_ltree_freq", ltree, specs["dyn_ltree_freq"])
        dtree = self._spec_buffer("dyn_dtree_freq", dtree, specs["dyn_dtree_freq"])
        block = int(self.manifest["block_size"])
        self._scalar("block_size_in_kb", block_kb, block // 1024, block // 1024)
        n = self._scalar("input_size", input_size, 1, int(self.manifest["max_input_bytes"]))
        nblocks = -(-n // block)
        for port, buf, per_block in (("compressd_size", sizes, 4), ("in_block_size", lengths_buf, 4),
                                     ("dyn_ltree_freq", ltree, 4096), ("dyn_dtree_freq", dtree, 256)):
            if buf.nbytes < per_block * nblocks:
                raise EmulatorError(f"{self.name}.{port}: {nblocks} blocks need {per_block * nblocks} bytes, "
                                    f"the buffer has {buf.nbytes}")
        lengths = [int(v) for v in self._read("in_block_size", lengths_buf, 4 * nblocks).view("<u4")]
        data = self._read("in", src, n)
        sizes_out = np.zeros(nblocks, dtype="<u4")
        lfreq = np.zeros((nblocks, 1024), dtype="<u4")
        dfreq = np.zeros((nblocks, 64), dtype="<u4")
        for b, length in enumerate(lengths):
            start = b * block
            if not 1 <= length <= block:
                raise EmulatorError(f"{self.name}: in_block_size[{b}]={length} is outside 1..{block}")
            if start + length > n:
                raise EmulatorError(f"{self.name}: block {b} ({length} bytes from {start}) reads past "
                                    f"input_size={n}")
            if length < self.MIN_BLOCK:
                sizes_out[b] = length
                continue
            literals = data[start:start + length]
            tokens = literals.astype("<u4")  # match length 0, distance 0: literals
            self._write("out", lz77, tokens.view(np.uint8), offset=4 * block * b)
            sizes_out[b] = tokens.nbytes
            lfreq[b, :256] = np.bincount(literals, minlength=256)
            lfreq[b, 256] = 1  # end of block
        self._write("compressd_size", sizes, sizes_out)
        self._write("dyn_ltree_freq", ltree, lfreq)
        self._write("dyn_dtree_freq", dtree, dfreq)
        stores = {"lz77": lz77._store, "sizes": sizes._store, "ltree": ltree._store, "dtree": dtree._store}
        self.overlay._lz77_state = _Lz77HuffmanState(stores, n, block, lengths)
        pace(started, n, self.overlay.emulator.gzip_rate)
        return _Handle()


class HuffmanKernel(_Kernel):
    """Vitis 2019.2 ``xilHuffmanKernel(in, dyn_ltree_freq*, dyn_dtree_freq*, out,
    in_block_size*, compressd_size*, uint block_size_in_kb, uint input_size)``; the library's
    host binds the LZ77 buffer to ``in`` and its ``compressd_size`` buffer to the kernel's
    ``in_block_size`` port (the LZ77 byte counts in, the deflate byte counts out).

    Block b's tokens become deflate data at ``out[block * b]``: non-final, ending with an empty
    stored block (a sync flush), byte-aligned, no dictionary from the block before; its byte
    count replaces the LZ77 one.  The card writes one dynamic-Huffman block and never a stored
    one; the emulator compresses the literals with ISA-L, which may split a block or store
    parts, but it keeps what the host sees: an incompressible block comes out larger than its
    input (and than its slot), and the engines write at the same time, so such a block's tail
    may land on the next block's start (the emulator writes the last block first, so it does).
    A block the LZ77 kernel did not code (under 128 bytes) keeps its reported size and writes
    nothing."""

    arguments = ("in", "dyn_ltree_freq", "dyn_dtree_freq", "out", "in_block_size", "compressd_size",
                 "block_size_in_kb", "input_size")

    def _run(self, lz77, ltree, dtree, dst, sizes, lengths, block_kb, input_size) -> _Handle:
        specs = self.manifest["buffers"]
        lz77 = self._spec_buffer("in", lz77, specs["lz77_out"])
        ltree = self._spec_buffer("dyn_ltree_freq", ltree, specs["dyn_ltree_freq"])
        dtree = self._spec_buffer("dyn_dtree_freq", dtree, specs["dyn_dtree_freq"])
        dst = self._spec_buffer("out", dst, specs["out"])
        sizes = self._spec_buffer("in_block_size", sizes, specs["compressd_size"])
        self._spec_buffer("compressd_size", lengths, specs["in_block_size"])
        block = int(self.manifest["block_size"])
        self._scalar("block_size_in_kb", block_kb, block // 1024, block // 1024)
        n = self._scalar("input_size", input_size, 1, int(self.manifest["max_input_bytes"]))
        state = self.overlay._lz77_state
        expected = (lz77._store, sizes._store, ltree._store, dtree._store)
        if state is None or (state.stores["lz77"], state.stores["sizes"], state.stores["ltree"],
                             state.stores["dtree"]) != expected:
            raise EmulatorError(f"{self.name}: its in / in_block_size / frequency buffers are not the ones an "
                                f"xilLz77Compress run just wrote: the card would encode stale memory")
        if state.input_size != n:
            raise EmulatorError(f"{self.name}: input_size={n}, the LZ77 run had {state.input_size}")
        self.overlay._lz77_state = None  # the sizes are overwritten below: a second run would read garbage
        nblocks = len(state.lengths)
        lz77_sizes = self._device(sizes, 4 * nblocks).view("<u4")
        from isal import isal_zlib

        results = []
        for b, length in enumerate(state.lengths):
            size = int(lz77_sizes[b])
            if length < Lz77CompressKernel.MIN_BLOCK:
                results.append((b, None, size))
                continue
            tokens = self._device(lz77, size, offset=4 * block * b).view("<u4")
            if np.any(tokens >> 8):
                raise EmulatorError(f"{self.name}: block {b} holds match tokens the emulator never writes")
            compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -15)
            body = compressor.compress(tokens.astype(np.uint8).tobytes()) + compressor.flush(isal_zlib.Z_SYNC_FLUSH)
            results.append((b, body, len(body)))
        for b, body, _ in reversed(results):  # all engines at once: a long block overruns the next
            if body is not None:
                self._write("out", dst, body, offset=block * b)
        self._write("in_block_size", sizes, np.array([size for _, _, size in results], dtype="<u4"))
        return _Handle()


class FinnDmaKernel(_Kernel):
    """FINN's Alveo IODMA: ``idma0(in0_V, numReps)`` streams packed images into the network,
    ``odma0(out_V, numReps)`` writes its outputs; the odma's handle completes the run."""

    arguments = ("buffer", "numReps")

    def __init__(self, overlay, name, direction: str):
        super().__init__(overlay, name)
        self.direction = direction

    def _run(self, buffer, reps) -> _Handle:
        io = self.manifest["io_shape"]
        batch = int(self.manifest["batch_size"])
        reps = self._scalar("numReps", reps, 1, batch)
        buffer = self._buffer("buffer", buffer, np.uint8)
        pipeline = self.overlay._pipeline
        if self.direction == "in":
            per_image = int(np.prod(io["ishape_packed"][1:]))
            started = time.monotonic()
            raw = self._read("in0_V", buffer, reps * per_image)
            pipeline["inputs"].append((started, self.overlay._network(raw, reps)))
            return _Handle()
        per_image = int(np.prod(io["oshape_packed"][1:]))
        if reps * per_image > buffer.nbytes:
            raise EmulatorError(f"{self.name}: {reps} outputs overflow a {buffer.nbytes}-byte buffer")

        def finish():
            if not pipeline["inputs"]:
                raise EmulatorError(f"{self.name}: waiting for {reps} outputs that no input DMA started: "
                                    f"the card would hang")
            started, classes = pipeline["inputs"].popleft()
            pace(started, reps, self.overlay.emulator.cnv_rate)
            if len(classes) != reps:
                raise EmulatorError(f"{self.name}: {reps} outputs expected, the input DMA sent {len(classes)} "
                                    f"images: the card would hang or leave data in the pipeline")
            self._write("out_V", buffer, classes.astype(np.uint8))

        return _Handle(finish)


# ---------------------------------------------------------------------------------------------
# Overlays


class EmulatedOverlay:
    def __init__(self, emulator: "EmulatedPynq", xclbin, download: bool = True, device=None, **kwargs):
        self.emulator = emulator
        devices = emulator.Device.devices
        if not devices:
            raise RuntimeError("No Devices Found")
        if device is None:
            device = emulator.Device.active_device or devices[0]
        if not isinstance(device, EmulatedDevice) or device.emulator is not emulator:
            raise EmulatorError(f"{device!r} is not a card of this emulator")
        self.device = device
        self.manifest = emulator.manifest_for(xclbin)
        if self.manifest["shell"] != device.name:
            raise RuntimeError(f"{Path(str(xclbin)).name} was built for {self.manifest['shell']}, "
                               f"card {device.index} runs {device.name}")
        with emulator.lock:
            previous = device.loaded
            if previous is not None:
                previous._unloaded = "the card was reprogrammed with another xclbin"
            device.loaded = self
            emulator.stats["overlays_loaded"] += 1
        self._unloaded = None
        self._pipeline = {"inputs": collections.deque()}
        self.kernels: dict[str, _Kernel] = {}
        self._lz77_state = None
        interface = self.manifest.get("interface")
        if interface == "xilGzipCompBlock":
            self.kernels[self.manifest["kernel"]] = GzipCompBlockKernel(self, self.manifest["kernel"])
        elif interface == "xilLz77Compress+xilHuffmanKernel":
            names = self.manifest["kernels"]
            self.kernels[names["lz77"]] = Lz77CompressKernel(self, names["lz77"])
            self.kernels[names["huffman"]] = HuffmanKernel(self, names["huffman"])
        elif interface == "finn-alveo":
            for key, direction in (("input_dma", "in"), ("output_dma", "out")):
                name = self.manifest[key]
                self.kernels[name] = FinnDmaKernel(self, name, direction)
        else:
            raise EmulatorError(f"{self.manifest['name']}: the emulator has no kernels for interface {interface!r}")
        self.ip_dict = {name: {"type": type(k).__name__, "mem_id": self.manifest.get("memory")}
                        for name, k in self.kernels.items()}
        self.mem_dict = {name: {"used": 1} for name in device.memories}

    def __getattr__(self, name):
        kernels = self.__dict__.get("kernels", {})
        if name in kernels:
            return kernels[name]
        memories = self.__dict__["device"].memories if "device" in self.__dict__ else {}
        if name in memories:
            return memories[name]
        raise AttributeError(f"overlay has no IP or memory named {name!r}")

    def _check_loaded(self, kernel: str) -> None:
        if self._unloaded:
            raise EmulatorError(f"{kernel}: its overlay is no longer on the card ({self._unloaded})")

    def _network(self, packed: np.ndarray, n: int) -> np.ndarray:
        """The classes the network computes for n images given as FINN-packed bytes."""
        io = self.manifest["io_shape"]
        if io["idt"] != "UINT8" or int(np.prod(io["ishape_packed"][1:])) != 32 * 32 * 3:
            raise EmulatorError("the emulator runs UINT8 inputs, 3072 bytes per image")
        # UINT8 rows pack one element per byte, element i at byte i: the packed bytes of an image
        # (32, 32, SIMD groups, SIMD) are its NHWC pixels in order
        images = packed.reshape(n, 32, 32, 3)
        return self.emulator.classify(images)

    def free(self) -> None:
        with self.emulator.lock:
            if self.device.loaded is self:
                self.device.loaded = None
            if not self._unloaded:
                self._unloaded = "freed"
                self.emulator.stats["overlays_freed"] += 1

    def __repr__(self):
        return f"<emulated overlay {self.manifest['name']} on card {self.device.index}>"


# ---------------------------------------------------------------------------------------------
# The module-like object


class EmulatedPynq:
    """Stands in for the ``pynq`` module: ``Device``, ``Overlay``, ``allocate``."""

    emulated = True

    def __init__(self, devices: int | None = None, shell: str | None = None, classifier=None):
        if devices is None:
            value = os.environ.get(DEVICES_ENV, "").strip()
            devices = int(value) if value else DEFAULT_DEVICES
        if devices < 0:
            raise ValueError(f"{DEVICES_ENV} must be >= 0")
        from octoray.kernels.fpga import FUNCTION_OVERLAYS, load_manifest

        self.manifests = {}
        for names in FUNCTION_OVERLAYS.values():
            for name in names:
                manifest = load_manifest(name)
                self.manifests[manifest["xclbin"]] = manifest
        self.shell = shell or next(iter(self.manifests.values()))["shell"]
        self.lock = threading.RLock()
        self.stats: collections.Counter = collections.Counter()
        self._classifier = classifier  # images uint8 (N, 32, 32, 3) -> classes (N,)
        self.gzip_rate = emulated_rate(GZIP_RATE_ENV, 1e6)  # bytes/s of one card, None: unpaced
        self.cnv_rate = emulated_rate(CNV_RATE_ENV)  # images/s of one card
        self.Device = _DeviceClass("Device", (EmulatedDevice,),
                                   {"_emulator": self, "_count": devices, "_devices": None, "active_device": None})

    def manifest_for(self, xclbin) -> dict:
        name = Path(str(xclbin)).name
        if name not in self.manifests:
            raise EmulatorError(f"{name}: not an xclbin the emulator knows ({', '.join(self.manifests)})")
        return self.manifests[name]

    def Overlay(self, xclbin, download: bool = True, device=None, **kwargs) -> EmulatedOverlay:  # noqa: N802
        return EmulatedOverlay(self, xclbin, download=download, device=device, **kwargs)

    def allocate(self, shape, dtype="u4", target=None, **kwargs) -> EmulatedBuffer:
        if target is None:
            target = self.Device.active_device or (self.Device.devices or [None])[0]
            if target is None:
                raise RuntimeError("No Devices Found")
        owner = target.emulator if isinstance(target, EmulatedDevice) else (
            target.device.emulator if isinstance(target, EmulatedMemory) else None)
        if owner is not self:
            raise EmulatorError(f"allocate: {target!r} is not a card or memory bank of this emulator")
        return target.allocate(shape, dtype, **kwargs)

    def classify(self, images: np.ndarray) -> np.ndarray:
        """Top-1 classes of the shipped integer model (the CPU kernel; lowest index wins a tie),
        or of the `classifier` given to the constructor."""
        with self.lock:
            if self._classifier is None:
                from octoray.kernels.cpu import CpuAccelerator

                cpu = CpuAccelerator()
                self._classifier = lambda x: np.argmax(cpu.cnv_scores(x), axis=1)
        return np.asarray(self._classifier(np.ascontiguousarray(images, dtype=np.uint8)))


_shared: EmulatedPynq | None = None
_shared_lock = threading.Lock()


def shared() -> EmulatedPynq:
    """This process's emulator (its cards are shared by every accelerator of the process)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = EmulatedPynq()
        return _shared
