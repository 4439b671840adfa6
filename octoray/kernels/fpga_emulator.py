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
  class indices, or fc3's popcounts where the manifest's ``output`` says so.

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
import re
import threading
import warnings
from pathlib import Path

import numpy as np

from octoray.kernels.fpga_emulated_kernels import FinnDmaKernel, GzipCompBlockKernel, HuffmanKernel, Lz77CompressKernel, \
    _Kernel
from octoray.kernels import FpgaUnavailable
from octoray.kernels.fpga_emulated_memory import EmulatedBuffer, EmulatedMemory, EmulatorError, _Storage

DEFAULT_DEVICES = 2
MAX_DEVICES = 64  # a host's PCIe slots, many times over (each card holds open files)
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
        raise FpgaUnavailable(f"{name}={value!r} is not a number") from None
    if not rate > 0:
        raise FpgaUnavailable(f"{name}={value!r} must be above 0")
    return rate


def _devices_from_env() -> int:
    value = os.environ.get(DEVICES_ENV, "").strip()
    if not value:
        return DEFAULT_DEVICES
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_DEVICES:
        raise FpgaUnavailable(f"{DEVICES_ENV}={value!r} is not a number of cards (0 to {MAX_DEVICES})")
    return int(value)


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
        """What the network writes for n images given as FINN-packed bytes, as the bytes of
        the output buffer: one UINT8 class an image, or (``"output": "popcounts"``) fc3's ten
        popcounts as whole-byte little-endian words (FINN rounds a network's last output
        type up to whole bytes, and packs such a row as its elements in order)."""
        io = self.manifest["io_shape"]
        if io["idt"] != "UINT8" or int(np.prod(io["ishape_packed"][1:])) != 32 * 32 * 3:
            raise EmulatorError("the emulator runs UINT8 inputs, 3072 bytes per image")
        # UINT8 rows pack one element per byte, element i at byte i: the packed bytes of an image
        # (32, 32, SIMD groups, SIMD) are its NHWC pixels in order
        images = packed.reshape(n, 32, 32, 3)
        per_image = int(np.prod(io["oshape_packed"][1:]))
        if self.manifest.get("output", "top1") == "top1":
            if io["odt"] != "UINT8" or per_image != 1:
                raise EmulatorError("the emulator writes a top-1 class as one UINT8 an image")
            return self.emulator.classify(images).astype(np.uint8)
        odt = re.fullmatch(r"(U?)INT(8|16|32)", io["odt"])
        if odt is None or per_image != 10 * int(odt[2]) // 8:
            raise EmulatorError(f"the emulator writes popcounts as ten whole-byte words an image, not {io['odt']} "
                                f"in {per_image} bytes")
        word = np.dtype(f"<{'u' if odt[1] else 'i'}{int(odt[2]) // 8}")
        return np.ascontiguousarray(self.emulator.popcounts(images), dtype=word).view(np.uint8).reshape(n, per_image)

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
            devices = _devices_from_env()
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
        self._cpu = None  # the CPU kernel that computes what the CNV overlay's network does
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
        if self._classifier is not None:
            return np.asarray(self._classifier(np.ascontiguousarray(images, dtype=np.uint8)))
        return np.argmax(self.popcounts(images), axis=1)

    def popcounts(self, images: np.ndarray) -> np.ndarray:
        """fc3's popcounts (N, 10) of the shipped integer model (the CPU kernel)."""
        if self._classifier is not None:
            raise EmulatorError("this emulator was given a classifier: it has classes, not popcounts")
        with self.lock:
            if self._cpu is None:
                from octoray.kernels.cpu import CpuAccelerator

                self._cpu = CpuAccelerator()
        return self._cpu.cnv_scores(np.ascontiguousarray(images, dtype=np.uint8), popcounts=True)


_shared: EmulatedPynq | None = None
_shared_lock = threading.Lock()


def shared() -> EmulatedPynq:
    """This process's emulator (its cards are shared by every accelerator of the process)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = EmulatedPynq()
        return _shared

