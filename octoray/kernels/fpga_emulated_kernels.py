"""The emulated kernels of octoray's overlays: the Vitis gzip kernels (xilGzipCompBlock, the
xilLz77Compress + xilHuffmanKernel pair) and FINN's DMA pair, each computing for real what
the hardware writes into its buffers, paced by the throughput model where one is set.
Part of the PYNQ emulator (octoray.kernels.fpga_emulator), which loads them per overlay.
"""

from __future__ import annotations

import time
import types
import zlib

import numpy as np

from octoray.kernels.fpga_emulated_memory import EmulatedBuffer, EmulatorError, pace


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

    def __init__(self, overlay, name: str):  # overlay: fpga_emulator.EmulatedOverlay
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
            started, outputs = pipeline["inputs"].popleft()
            pace(started, reps, self.overlay.emulator.cnv_rate)
            if len(outputs) != reps:
                raise EmulatorError(f"{self.name}: {reps} outputs expected, the input DMA sent {len(outputs)} "
                                    f"images: the card would hang or leave data in the pipeline")
            self._write("out_V", buffer, outputs.reshape(-1))

        return _Handle(finish)
