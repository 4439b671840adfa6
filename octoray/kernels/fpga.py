"""FPGA accelerators: PYNQ 3.0.1 drivers for the Alveo overlays in ``overlays/``.

- gzip, either of two overlays, chosen by the manifest's ``interface``:
  - ``gzip_u50``: the Vitis Data Compression Library's ``xilGzipCompBlock`` kernel (2020.2 and
    later), :class:`GzipDriver`;
  - ``gzip_hbm_u50``: the 2019.2 library's ``gzip_hbm`` pair ``xilLz77Compress`` +
    ``xilHuffmanKernel`` (1 MiB blocks, 8 engines), :class:`Lz77HuffmanDriver`.
  Both give non-final deflate blocks that end byte-aligned, so the outputs of consecutive runs
  join into one stream; the host appends the final empty stored block after a stream's last
  chunk and computes the CRC-32 itself (octoray.kernels.tasks).  Where both xclbins are
  installed, ``gzip_u50`` is used (``FUNCTION_OVERLAYS`` gives the order).
- CNV-W1A1: FINN's Alveo interface (overlay ``cnv_w1a1_u50``): DMA kernels ``idma0`` /
  ``odma0`` moving FINN-packed uint8 buffers of the manifest's shapes, a batch at a time; the
  output is the top-1 class index of each image.

One :class:`FpgaAccelerator` drives one card, chosen by its index in ``pynq.Device.devices``
(several U50s share one shell name).  Every PYNQ call runs on the accelerator's own thread,
which has an event loop (PYNQ's device constructor calls ``asyncio.get_event_loop()``) and
serialises the use of the card's buffers.  An overlay is loaded on first use and kept; an
Alveo card holds one xclbin at a time, so asking for the other function reloads the card.

The ``pynq`` module is imported lazily and can be replaced (``pynq_module=``): the emulator
(octoray.kernels.fpga_emulator) offers the same surface, so these drivers run unchanged on it.
No card was available to verify them on hardware.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import sys
import threading
from pathlib import Path

from octoray.formats.gzip import FINAL_EMPTY_BLOCK, SYNC_FLUSH_TAIL

# numpy, json and asyncio are imported where used: `auto` on a host without pynq must stay as
# light as the CPU kernels (fgzip's start-up)

OVERLAYS_ENV = "OCTORAY_OVERLAYS"
GZIP_OVERLAY = "gzip_u50"
GZIP_HBM_OVERLAY = "gzip_hbm_u50"
CNV_OVERLAY = "cnv_w1a1_u50"
FUNCTIONS = {"gzip": GZIP_OVERLAY, "cnv": CNV_OVERLAY}  # each function's preferred overlay
# every overlay that can serve a function, preferred first: the first whose xclbin is found is
# used (the 2020.2+ single kernel before the 2019.2 pair: fewer runs, no host-side fallbacks)
FUNCTION_OVERLAYS = {"gzip": (GZIP_OVERLAY, GZIP_HBM_OVERLAY), "cnv": (CNV_OVERLAY,)}
MANIFEST_FORMAT = "octoray-overlay"


class FpgaUnavailable(RuntimeError):
    """No usable card (or overlay) for this accelerator; the message says why."""


# ---------------------------------------------------------------------------------------------
# Overlays: manifests and xclbins


def overlay_dirs() -> list[Path]:
    """Where overlays are looked for, first match wins: ``$OCTORAY_OVERLAYS`` (``:``-separated),
    the source tree's ``overlays/``, then ``<prefix>/share/octoray/overlays``."""
    dirs = [Path(p) for p in os.environ.get(OVERLAYS_ENV, "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parent.parent.parent / "overlays")
    dirs.append(Path(sys.prefix) / "share" / "octoray" / "overlays")
    return dirs


def load_manifest(name: str) -> dict:
    """The manifest of overlay `name` (the first ``<dir>/<name>/manifest.json``), with
    ``_dir`` set to its folder."""
    for d in overlay_dirs():
        path = d / name / "manifest.json"
        if path.is_file():
            import json

            manifest = json.loads(path.read_text())
            if manifest.get("format") != MANIFEST_FORMAT or manifest.get("name") != name:
                raise FpgaUnavailable(f"{path}: not an octoray overlay manifest for {name}")
            manifest["_dir"] = str(path.parent)
            return manifest
    raise FpgaUnavailable(f"no manifest for overlay {name} in {', '.join(map(str, overlay_dirs()))}")


def find_xclbin(manifest: dict) -> Path | None:
    """The overlay's xclbin: next to its manifest, else ``<dir>/<name>/<xclbin>`` in any
    overlay folder (so a user may drop the file into ``$OCTORAY_OVERLAYS/<name>/``)."""
    candidates = [Path(manifest["_dir"]) / manifest["xclbin"]]
    candidates += [d / manifest["name"] / manifest["xclbin"] for d in overlay_dirs()]
    for path in candidates:
        if path.is_file():
            return path
    return None


def pynq_installed() -> bool:
    return importlib.util.find_spec("pynq") is not None


def pynq_missing_reason() -> str | None:
    """Cheap checks, before importing pynq: why no FPGA can be used here, or None."""
    if not pynq_installed():
        return "pynq not installed"
    missing = []
    for names in FUNCTION_OVERLAYS.values():
        for name in names:
            try:
                if find_xclbin(load_manifest(name)) is not None:
                    return None
            except FpgaUnavailable:
                pass
        missing.append("/".join(names))
    return f"no overlay xclbin ({', '.join(missing)}; see overlays/README.md)"


# ---------------------------------------------------------------------------------------------
# FINN's packing


def finn_pack(folded: np.ndarray, bits: int) -> np.ndarray:
    """FINN's packing of a folded tensor into bytes, as its generated drivers do it.

    Element i of the innermost dimension sits at bits [i*bits, (i+1)*bits) of one
    little-endian word per row; rows are padded to whole bytes.  Values are unsigned codes
    (bipolar data: -1 -> 0, +1 -> 1 beforehand).  Shape: folded.shape[:-1] + (row bytes,)."""
    import numpy as np

    folded = np.asarray(folded)
    if bits == 8:
        return np.ascontiguousarray(folded, dtype=np.uint8)
    if not 1 <= bits <= 32:
        raise ValueError(f"unsupported width {bits}")
    if folded.size and (folded.min() < 0 or folded.max() >= 2 ** bits):
        raise ValueError(f"values do not fit in {bits} unsigned bits")
    codes = folded.astype(np.uint64)
    width = codes.shape[-1] * bits
    row_bytes = (width + 7) // 8
    # bit j of element i goes to row bit i*bits + j
    bit_planes = (codes[..., :, None] >> np.arange(bits, dtype=np.uint64)) & 1
    row_bits = bit_planes.reshape(*codes.shape[:-1], width).astype(np.uint8)
    pad = row_bytes * 8 - width
    if pad:
        row_bits = np.concatenate([row_bits, np.zeros((*codes.shape[:-1], pad), np.uint8)], axis=-1)
    return np.packbits(row_bits, axis=-1, bitorder="little")


def finn_unpack(packed: np.ndarray, bits: int, folded_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`finn_pack`: unsigned codes (uint8 where bits <= 8, else uint32) of
    `folded_shape`."""
    import numpy as np

    packed = np.asarray(packed, dtype=np.uint8)
    if bits == 8:
        return packed.reshape(folded_shape)
    inner = folded_shape[-1]
    row_bits = np.unpackbits(packed, axis=-1, count=inner * bits, bitorder="little")
    planes = row_bits.reshape(*folded_shape[:-1], inner, bits).astype(np.uint32)
    codes = (planes << np.arange(bits, dtype=np.uint32)).sum(axis=-1, dtype=np.uint32)
    return codes.astype(np.uint8 if bits <= 8 else np.uint32).reshape(folded_shape)


_FINN_TYPES = {"UINT8": 8, "BIPOLAR": 1, "BINARY": 1, "UINT4": 4, "UINT2": 2, "UINT16": 16, "UINT32": 32}


def finn_bits(datatype: str) -> int:
    try:
        return _FINN_TYPES[datatype]
    except KeyError:
        raise FpgaUnavailable(f"FINN data type {datatype} is not supported by this driver") from None


# ---------------------------------------------------------------------------------------------
# The card's thread


class CardThread:
    """One thread with its own event loop; every PYNQ call for a card runs on it."""

    def __init__(self, name: str):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import asyncio

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                fn, args, done = job
                try:
                    done.append((True, fn(*args)))
                except BaseException as error:  # handed to the caller
                    done.append((False, error))
                done_event = done[0]
                done_event.set()
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    def run(self, fn, *args):
        if threading.current_thread() is self._thread:
            return fn(*args)
        if not self._thread.is_alive():
            raise RuntimeError("the card's thread has stopped")
        event = threading.Event()
        done: list = [event]
        self._jobs.put((fn, args, done))
        event.wait()
        ok, value = done[1]
        if ok:
            return value
        raise value

    def stop(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout=30)


# ---------------------------------------------------------------------------------------------
# Drivers (they run on the card's thread)


def _allocate(pynq, spec: dict, target, shape=None):
    import numpy as np

    shape = tuple(shape if shape is not None else spec["shape"])
    if target is None:
        return pynq.allocate(shape, dtype=np.dtype(spec["dtype"]))
    return pynq.allocate(shape, dtype=np.dtype(spec["dtype"]), target=target)


def _bank(overlay, manifest: dict):
    bank = manifest.get("memory")
    if not bank:
        return None
    target = getattr(overlay, bank, None)
    if target is None:
        raise FpgaUnavailable(f"{manifest['name']}: the overlay has no memory bank {bank}")
    return target


class _GzipOverlayDriver:
    """What both gzip overlays' drivers share: `deflate` in runs of at most `max_input`
    bytes (`_run`), and freeing their buffers and overlay."""

    max_input: int
    buffers: dict
    overlay = None

    def deflate(self, data) -> bytes:
        """Non-final deflate blocks of `data`, ending byte-aligned (joinable)."""
        import numpy as np

        view = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        return b"".join(self._run(view[start:start + self.max_input]) for start in range(0, len(view), self.max_input))

    def close(self) -> None:
        for buf in self.buffers.values():
            buf.freebuffer()
        self.buffers = {}
        if self.overlay is not None:
            self.overlay.free()
            self.overlay = None


class GzipDriver(_GzipOverlayDriver):
    """``xilGzipCompBlock(in, out, compressd_size*, checksumData*, uint input_size,
    bool checksumType)`` on buffers allocated once, of the manifest's shapes."""

    def __init__(self, pynq, device, manifest: dict, xclbin: str):
        if manifest.get("interface") != "xilGzipCompBlock":
            raise FpgaUnavailable(f"{manifest['name']}: gzip interface {manifest.get('interface')} is not supported")
        self.manifest = manifest
        self.max_input = int(manifest["max_input_bytes"])
        self.overlay = pynq.Overlay(xclbin, device=device)
        self.buffers = {}
        try:
            self.kernel = getattr(self.overlay, manifest["kernel"])
            bank = _bank(self.overlay, manifest)
            for name in ("in", "out", "compressd_size", "checksumData"):
                self.buffers[name] = _allocate(pynq, manifest["buffers"][name], bank)
        except BaseException:
            self.close()
            raise
        if self.buffers["in"].nbytes < self.max_input:
            raise FpgaUnavailable(f"{manifest['name']}: input buffer smaller than max_input_bytes")

    def _run(self, piece: np.ndarray) -> bytes:
        import numpy as np

        b = self.buffers
        n = len(piece)
        src = b["in"][:n]
        np.copyto(src, piece)
        src.sync_to_device()
        b["checksumData"][0] = 0xFFFFFFFF  # CRC-32's initial register; the host keeps its own CRC
        b["checksumData"].sync_to_device()
        self.kernel.call(b["in"], b["out"], b["compressd_size"], b["checksumData"], n, True)
        b["compressd_size"].sync_from_device()
        size = int(b["compressd_size"][0])
        if not 0 < size <= b["out"].nbytes:
            raise RuntimeError(f"{self.manifest['name']}: kernel reported {size} compressed bytes "
                               f"for {n} input bytes (output buffer {b['out'].nbytes})")
        out = b["out"][:size]
        out.sync_from_device()
        return out.tobytes()


STORED_MAX = 65535  # a stored block's LEN is 16 bits


def stored_blocks(data) -> bytes:
    """`data` as non-final stored deflate blocks, starting and ending byte-aligned (each block:
    a 0x00 header byte, BFINAL=0 and BTYPE=00 padded to the byte, then LEN, NLEN and the bytes)."""
    data = memoryview(data).cast("B")
    parts = []
    for start in range(0, len(data), STORED_MAX):
        piece = data[start:start + STORED_MAX]
        n = len(piece)
        parts += [b"\x00", n.to_bytes(2, "little"), (n ^ 0xFFFF).to_bytes(2, "little"), piece]
    return b"".join(parts)


class Lz77HuffmanDriver(_GzipOverlayDriver):
    """The 2019.2 ``gzip_hbm`` pair on buffers allocated once, of the manifest's shapes:

    ``xilLz77Compress(in, lz77_out, compressd_size*, in_block_size*, dyn_ltree_freq*,
    dyn_dtree_freq*, uint block_size_in_kb, uint input_size)`` then ``xilHuffmanKernel(lz77_out,
    dyn_ltree_freq*, dyn_dtree_freq*, out, compressd_size*, in_block_size*, uint
    block_size_in_kb, uint input_size)``, as the library's host (L3 ``zlib.cpp``) binds them.

    A run takes up to ``max_input_bytes`` (8 MiB) as blocks of ``block_size`` (1 MiB), one an
    engine; the host gives each block's length in ``in_block_size[b]``.  Afterwards
    ``compressd_size[b]`` holds the deflate bytes of block b, written at ``out[b * block_size]``
    (one non-final dynamic-Huffman block and a sync flush).  The host joins the blocks in order.

    The library's host copies every block as the card wrote it.  This driver does not where the
    card's bytes cannot be right or do not help: a block whose output is not smaller than its
    input (random data: the kernels never emit a stored block, so it comes out larger than its
    1 MiB slot and runs into the next block's, written at the same time by another engine), the
    block after such a one (its start may be overwritten), and a block the kernels did not
    encode (under 128 bytes, some releases report its input size and write nothing).  Those the
    host writes itself as stored blocks from its own copy of the input."""

    INTERFACE = "xilLz77Compress+xilHuffmanKernel"
    BUFFERS = ("in", "lz77_out", "compressd_size", "in_block_size", "dyn_ltree_freq", "dyn_dtree_freq", "out")

    def __init__(self, pynq, device, manifest: dict, xclbin: str):
        if manifest.get("interface") != self.INTERFACE:
            raise FpgaUnavailable(f"{manifest['name']}: gzip interface {manifest.get('interface')} is not supported")
        self.manifest = manifest
        self.max_input = int(manifest["max_input_bytes"])
        self.block = int(manifest["block_size"])
        if self.block <= 0 or self.block % 1024 or self.max_input <= 0:
            raise FpgaUnavailable(f"{manifest['name']}: block_size must be a positive number of KiB")
        self.max_blocks = -(-self.max_input // self.block)
        self.stats = {"runs": 0, "card_blocks": 0, "stored_blocks": 0}
        self.overlay = pynq.Overlay(xclbin, device=device)
        self.buffers = {}
        try:
            kernels = manifest["kernels"]
            self.lz77 = getattr(self.overlay, kernels["lz77"])
            self.huffman = getattr(self.overlay, kernels["huffman"])
            bank = _bank(self.overlay, manifest)
            for name in self.BUFFERS:
                spec = manifest["buffers"][name]
                target = _bank(self.overlay, {"name": manifest["name"], "memory": spec["memory"]}) if spec.get("memory") else bank
                self.buffers[name] = _allocate(pynq, spec, target)
        except BaseException:
            self.close()
            raise
        b = self.buffers
        needed = {"in": self.max_input, "lz77_out": 4 * self.max_input, "out": self.max_blocks * self.block,
                  "compressd_size": 4 * self.max_blocks, "in_block_size": 4 * self.max_blocks,
                  "dyn_ltree_freq": 4 * 1024 * self.max_blocks, "dyn_dtree_freq": 4 * 64 * self.max_blocks}
        for name, nbytes in needed.items():
            if b[name].nbytes < nbytes:
                self.close()
                raise FpgaUnavailable(f"{manifest['name']}: buffer {name} holds {b[name].nbytes} bytes, "
                                      f"{nbytes} needed for max_input_bytes {self.max_input}")

    def block_lengths(self, n: int) -> list[int]:
        return [min(self.block, n - start) for start in range(0, n, self.block)]

    def _run(self, piece: np.ndarray) -> bytes:
        import numpy as np

        b = self.buffers
        n = len(piece)
        lengths = self.block_lengths(n)
        src = b["in"][:n]
        np.copyto(src, piece)
        src.sync_to_device()
        b["in_block_size"][:] = 0
        b["in_block_size"][:len(lengths)] = lengths
        b["in_block_size"].sync_to_device()
        kb = self.block // 1024
        self.lz77.call(b["in"], b["lz77_out"], b["compressd_size"], b["in_block_size"],
                       b["dyn_ltree_freq"], b["dyn_dtree_freq"], kb, n)
        self.huffman.call(b["lz77_out"], b["dyn_ltree_freq"], b["dyn_dtree_freq"], b["out"],
                          b["compressd_size"], b["in_block_size"], kb, n)
        self.stats["runs"] += 1
        sizes_buf = b["compressd_size"][:len(lengths)]
        sizes_buf.sync_from_device()
        sizes = [int(s) for s in sizes_buf]
        parts = []
        overran = False  # the previous block ran past its slot into this one's
        for i, (length, size) in enumerate(zip(lengths, sizes)):
            start = i * self.block
            if size == 0 or start + size > b["out"].nbytes:
                raise RuntimeError(f"{self.manifest['name']}: kernel reported {size} compressed bytes for block {i} "
                                   f"({length} input bytes, output buffer {b['out'].nbytes})")
            if size < length and not overran:
                out = b["out"][start:start + size]
                out.sync_from_device()
                body = out.tobytes()
                if not body.endswith(SYNC_FLUSH_TAIL):
                    raise RuntimeError(f"{self.manifest['name']}: block {i} does not end byte-aligned with a sync flush")
                parts.append(body)
                self.stats["card_blocks"] += 1
            else:
                parts.append(stored_blocks(piece[start:start + length]))
                self.stats["stored_blocks"] += 1
            overran = size > self.block
        return b"".join(parts)


class CnvDriver:
    """FINN's Alveo accelerator: ``idma0.start(ibuf, n)``, ``odma0.start(obuf, n)``, wait on
    the odma; packed uint8 buffers of the manifest's shapes with its batch size."""

    def __init__(self, pynq, device, manifest: dict, xclbin: str):
        import numpy as np

        if manifest.get("interface") != "finn-alveo":
            raise FpgaUnavailable(f"{manifest['name']}: interface {manifest.get('interface')} is not supported")
        io = manifest["io_shape"]
        self.manifest = manifest
        self.batch_size = int(manifest["batch_size"])
        self.ibits, self.obits = finn_bits(io["idt"]), finn_bits(io["odt"])
        self.ishape_normal = tuple(io["ishape_normal"][1:])
        self.ishape_folded = tuple(io["ishape_folded"][1:])
        self.ishape_packed = tuple(io["ishape_packed"][1:])
        self.oshape_normal = tuple(io["oshape_normal"][1:])
        self.oshape_folded = tuple(io["oshape_folded"][1:])
        self.oshape_packed = tuple(io["oshape_packed"][1:])
        if self.ishape_normal != (32, 32, 3) or int(np.prod(self.oshape_normal)) != 1:
            raise FpgaUnavailable(f"{manifest['name']}: expected input (N, 32, 32, 3) and one class per image")
        self.overlay = pynq.Overlay(xclbin, device=device)
        self.ibuf = self.obuf = None
        try:
            self.idma = getattr(self.overlay, manifest.get("input_dma", "idma0"))
            self.odma = getattr(self.overlay, manifest.get("output_dma", "odma0"))
            bank = _bank(self.overlay, manifest)
            spec = {"dtype": "uint8"}
            self.ibuf = _allocate(pynq, spec, bank, (self.batch_size, *self.ishape_packed))
            self.obuf = _allocate(pynq, spec, bank, (self.batch_size, *self.oshape_packed))
        except BaseException:
            self.close()
            raise

    def pack(self, images: np.ndarray) -> np.ndarray:
        folded = images.reshape((len(images), *self.ishape_folded))
        packed = finn_pack(folded, self.ibits)
        return packed.reshape((len(images), *self.ishape_packed))

    def unpack(self, packed: np.ndarray) -> np.ndarray:
        import numpy as np

        folded = finn_unpack(packed.reshape((len(packed), *self.oshape_packed)), self.obits,
                             (len(packed), *self.oshape_folded))
        return folded.reshape(len(packed)).astype(np.int64)

    def classify(self, images: np.ndarray) -> np.ndarray:
        import numpy as np

        classes = np.empty(len(images), dtype=np.int64)
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            n = len(batch)
            ibuf = self.ibuf[:n]
            np.copyto(ibuf, self.pack(batch))
            ibuf.sync_to_device()
            self.idma.start(self.ibuf, n)
            handle = self.odma.start(self.obuf, n)
            handle.wait()
            obuf = self.obuf[:n]
            obuf.sync_from_device()
            classes[start:start + n] = self.unpack(np.array(obuf))
        return classes

    def close(self) -> None:
        for buf in (self.ibuf, self.obuf):
            if buf is not None:
                buf.freebuffer()
        self.ibuf = self.obuf = None
        if self.overlay is not None:
            self.overlay.free()
            self.overlay = None


# drivers by the manifest's "interface"
DRIVERS = {"xilGzipCompBlock": GzipDriver, Lz77HuffmanDriver.INTERFACE: Lz77HuffmanDriver, "finn-alveo": CnvDriver}


def driver_class(manifest: dict):
    try:
        return DRIVERS[manifest.get("interface")]
    except KeyError:
        raise FpgaUnavailable(f"{manifest.get('name')}: no driver for interface {manifest.get('interface')!r}") from None


# ---------------------------------------------------------------------------------------------
# The accelerator


def device_index_from_env(device: int | None = None) -> int:
    if device is not None:
        return int(device)
    value = os.environ.get("OCTORAY_DEVICE", "").strip() or "0"
    try:
        index = int(value)
    except ValueError:
        raise FpgaUnavailable(f"OCTORAY_DEVICE={value!r} is not a card index") from None
    if index < 0:
        raise FpgaUnavailable(f"OCTORAY_DEVICE={value!r} is not a card index")
    return index


def import_pynq():
    try:
        import pynq  # noqa: PLC0415 - optional, heavy
    except ImportError as error:
        raise FpgaUnavailable(f"pynq not installed ({error})") from None
    except OSError as error:  # XILINX_XRT set but its libraries missing
        raise FpgaUnavailable(f"pynq cannot load XRT ({error})") from None
    return pynq


class FpgaAccelerator:
    """One Alveo card (by index), driven through `pynq_module` (default: the real ``pynq``).

    ``fallback``: an accelerator (the CPU's) for a function whose overlay has no xclbin; without
    one such a call raises :class:`FpgaUnavailable`.  ``fallback_reason`` is None unless some
    function falls back, then it says why."""

    def __init__(self, device_index: int | None = None, pynq_module=None, kind: str = "fpga", fallback=None,
                 overlays: dict[str, str] | None = None):
        self.kind = kind
        self.device_index = device_index_from_env(device_index)
        self.pynq = pynq_module if pynq_module is not None else import_pynq()
        self.emulated = bool(getattr(self.pynq, "emulated", False))
        self.fallback = fallback
        self.overlays_opened = 0
        self._lock = threading.Lock()
        self._function = None
        self._driver = None
        self._thread = CardThread(f"octoray-{kind}-{self.device_index}")
        try:
            self.device = self._thread.run(self._open_device)
        except BaseException:
            self._thread.stop()
            raise
        self.device_name = str(getattr(self.device, "name", "?"))
        self.available: dict[str, tuple[dict, str]] = {}
        missing = {}
        for function, names in (overlays or FUNCTION_OVERLAYS).items():
            chosen, why = self._choose_overlay((names,) if isinstance(names, str) else tuple(names))
            if chosen is None:
                missing[function] = why
            else:
                self.available[function] = chosen
        if not self.available:
            self._thread.stop()
            raise FpgaUnavailable("; ".join(missing.values()) or "no overlays")
        self.missing = missing
        self.fallback_reason = "; ".join(f"{f} on cpu: {why}" for f, why in missing.items()) or None
        self.name = f"{kind}:{self.device_index} " + "+".join(m["name"] for m, _ in self.available.values())
        if missing and fallback is not None:
            self.name += " (" + ", ".join(f"{f}: cpu" for f in missing) + ")"

    def _choose_overlay(self, names: tuple[str, ...]) -> tuple[tuple[dict, str] | None, str]:
        """The first of `names` whose manifest and xclbin are found; on the emulator, where
        none has an xclbin, the first with a manifest (it knows its overlays by file name)."""
        reasons, manifests = [], []
        for name in names:
            try:
                manifest = load_manifest(name)
            except FpgaUnavailable as error:
                reasons.append(str(error))
                continue
            manifests.append(manifest)
            xclbin = find_xclbin(manifest)
            if xclbin is not None:
                return (manifest, str(xclbin)), ""
            reasons.append(f"no {manifest['xclbin']} for {name}")
        if self.emulated and manifests:
            manifest = manifests[0]
            return (manifest, str(Path(manifest["_dir"]) / manifest["xclbin"])), ""
        return None, ", ".join(reasons) or "no overlays"

    def _open_device(self):
        devices = list(self.pynq.Device.devices)
        if not devices:
            raise FpgaUnavailable("no card found (is the XRT environment sourced?)")
        if self.device_index >= len(devices):
            raise FpgaUnavailable(f"no card {self.device_index} ({len(devices)} found)")
        return devices[self.device_index]

    def _driver_for(self, function: str):
        """The loaded driver for `function`, loading its overlay on first use (on the card's thread)."""
        if self._function == function:
            return self._driver
        if self._driver is not None:  # one xclbin per card: this reprograms it
            self._driver.close()
            self._driver, self._function = None, None
        manifest, xclbin = self.available[function]
        self._driver = driver_class(manifest)(self.pynq, self.device, manifest, xclbin)
        self._function = function
        self.overlays_opened += 1
        return self._driver

    def _call(self, function: str, method: str, *args):
        def job():
            return getattr(self._driver_for(function), method)(*args)

        with self._lock:
            if self._thread is None:
                raise RuntimeError(f"{self.name} is closed")
            return self._thread.run(job)

    def _fallback_for(self, function: str, needs_cpu: bool = False):
        """None where the card serves `function`, else the fallback accelerator; without one,
        FpgaUnavailable saying why."""
        if function in self.available and not needs_cpu:
            return None
        if self.fallback is None:
            why = "the kernel cannot do this variant" if needs_cpu and function in self.available \
                else self.missing.get(function, "no overlay for " + function)
            raise FpgaUnavailable(f"{self.name}: {why}")
        return self.fallback

    def deflate(self, data, dictionary: bytes | None, level: int, last: bool, strategy: str | None = None) -> bytes:
        """The kernel's blocks (it takes neither a dictionary nor a level: -1..-9 all run its
        one setting), plus the final empty block after a stream's last chunk.  pigz's -11 and
        its strategies (-H, -U) are variants the kernel cannot do: they run on the fallback."""
        variant = strategy is not None or level not in range(10)
        other = self._fallback_for("gzip", needs_cpu=variant)
        if other is not None:
            return other.deflate(data, dictionary, level, last, strategy)
        body = self._call("gzip", "deflate", data) if len(data) else b""
        return body + FINAL_EMPTY_BLOCK if last else body

    def cnv_classes(self, images) -> np.ndarray:
        import numpy as np

        images = np.ascontiguousarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
            raise ValueError(f"expected uint8 images of shape (N, 32, 32, 3), got {images.dtype} {images.shape}")
        if len(images) == 0:
            return np.zeros(0, dtype=np.int64)
        return self._call("cnv", "classify", images)

    def cnv_scores(self, images):
        """One-hot rows (N, 10) int64: 1 for the card's top-1 class."""
        import numpy as np

        other = self._fallback_for("cnv")
        if other is not None:
            return other.cnv_scores(images)
        classes = self.cnv_classes(images)
        scores = np.zeros((len(classes), 10), dtype=np.int64)
        if np.any((classes < 0) | (classes >= 10)):
            raise RuntimeError(f"{self.name}: the card returned a class outside 0..9")
        scores[np.arange(len(classes)), classes] = 1
        return scores

    def close(self) -> None:
        def job():
            if self._driver is not None:
                self._driver.close()
                self._driver, self._function = None, None

        with self._lock:
            if self._thread is not None:
                try:
                    self._thread.run(job)
                finally:
                    self._thread.stop()
                    self._thread = None
        if self.fallback is not None:
            self.fallback.close()
