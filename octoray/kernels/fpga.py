"""FPGA accelerators: PYNQ 3.0.1 drivers for the Alveo overlays in ``overlays/``.

- gzip, either of two overlays, chosen by the manifest's ``interface``:
  - ``gzip_u50``: the Vitis Data Compression Library's ``xilGzipCompBlock`` kernel (2020.2 and
    later), :class:`GzipDriver`;
  - ``gzip_hbm_u50``: the 2019.2 library's ``gzip_hbm`` pair ``xilLz77Compress`` +
    ``xilHuffmanKernel`` (1 MiB blocks, 8 engines), :class:`Lz77HuffmanDriver`
  (the drivers are in octoray.kernels.fpga_drivers).
  Both give non-final deflate blocks that end byte-aligned, so the outputs of consecutive runs
  join into one stream; the host appends the final empty stored block after a stream's last
  chunk and computes the CRC-32 itself (octoray.kernels.tasks).  Where both xclbins are
  installed, ``gzip_u50`` is used (``FUNCTION_OVERLAYS`` gives the order).
- CNV-W1A1: FINN's Alveo interface (overlay ``cnv_w1a1_u50``): DMA kernels ``idma0`` /
  ``odma0`` moving FINN-packed uint8 buffers of the manifest's shapes, a batch at a time; the
  output is the top-1 class index of each image, or fc3's ten popcounts where the manifest
  says ``"output": "popcounts"`` (a build without FINN's LabelSelect; summing views needs them).

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

from octoray.formats.gzip import FINAL_EMPTY_BLOCK
from octoray.kernels import FpgaUnavailable

TYPE_CHECKING = False
if TYPE_CHECKING:
    import numpy as np

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
# The card's thread


class CardThread:
    """One thread with its own event loop; every PYNQ call for a card runs on it.

    Callers queue their calls without waiting for one another: a call queued while the card
    works on another starts the moment that one ends (no thread has to wake up first)."""

    def __init__(self, name: str):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._queueing = threading.Lock()  # a call is queued before `stop`'s end marker, or refused
        self._stopped = False
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
        event = threading.Event()
        done: list = [event]
        with self._queueing:
            if self._stopped or not self._thread.is_alive():
                raise RuntimeError("the card's thread has stopped")
            self._jobs.put((fn, args, done))
        event.wait()
        ok, value = done[1]
        if ok:
            return value
        raise value

    def stop(self) -> None:
        """End the thread after the calls already queued."""
        with self._queueing:
            if self._stopped:
                return
            self._stopped = True
            self._jobs.put(None)
        self._thread.join(timeout=30)


# ---------------------------------------------------------------------------------------------
# The accelerator


def _checked_images(images) -> np.ndarray:
    import numpy as np

    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"expected uint8 images of shape (N, 32, 32, 3), got {images.dtype} {images.shape}")
    return images


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
        from octoray.kernels.fpga_drivers import driver_class

        self._driver = driver_class(manifest)(self.pynq, self.device, manifest, xclbin)
        self._function = function
        self.overlays_opened += 1
        return self._driver

    def _call(self, function: str, method: str, *args):
        def job():
            return getattr(self._driver_for(function), method)(*args)

        thread = self._thread  # no lock held across the call: the next one queues behind it
        if thread is None:
            raise RuntimeError(f"{self.name} is closed")
        try:
            return thread.run(job)
        except RuntimeError:
            if self._thread is None:
                raise RuntimeError(f"{self.name} is closed") from None
            raise

    def _fallback_for(self, function: str, variant: str | None = None):
        """None where the card serves `function`, else the fallback accelerator; without one,
        FpgaUnavailable saying why.  `variant`: what of `function` this call asks for that the
        kernel cannot do (None: nothing)."""
        if function in self.available and variant is None:
            return None
        if self.fallback is None:
            why = f"the kernel cannot do {variant}" if variant and function in self.available \
                else self.missing.get(function, "no overlay for " + function)
            raise FpgaUnavailable(f"{self.name}: {why}")
        return self.fallback

    def deflate(self, data, level: int, last: bool, strategy: str | None = None) -> bytes:
        """The kernel's blocks (it takes no level: -1..-9 all run its
        one setting), plus the final empty block after a stream's last chunk.  pigz's -11 and
        its strategies (-H, -U) are variants the kernel cannot do: they run on the fallback."""
        variant = f"the {strategy} strategy" if strategy else None if level in range(10) else f"level {level}"
        other = self._fallback_for("gzip", variant)
        if other is not None:
            return other.deflate(data, level, last, strategy)
        body = self._call("gzip", "deflate", data) if len(data) else b""
        return body + FINAL_EMPTY_BLOCK if last else body

    def cnv_classes(self, images) -> np.ndarray:
        return self._cnv("classify", images, ())

    def cnv_scores(self, images, popcounts: bool = False):
        """(N, 10) int64: fc3's popcounts from a card whose overlay returns them, else one-hot
        rows (1 for the card's top-1 class), and a batch that needs the popcounts
        (`popcounts`: summing views) runs on the fallback."""
        import numpy as np

        if self._returns_popcounts():
            return self._cnv("popcounts", images, (10,))
        other = self._fallback_for("cnv", "fc3 scores, which --top-k and summing views need: the card returns "
                                          "only its top-1 class" if popcounts else None)
        if other is not None:
            return other.cnv_scores(images, popcounts)
        classes = self.cnv_classes(images)
        scores = np.zeros((len(classes), 10), dtype=np.int64)
        if np.any((classes < 0) | (classes >= 10)):
            raise RuntimeError(f"{self.name}: the card returned a class outside 0..9")
        scores[np.arange(len(classes)), classes] = 1
        return scores

    def _cnv(self, method: str, images, row: tuple) -> np.ndarray:
        """The CNV driver's `method` on a checked batch; an empty batch loads no overlay."""
        import numpy as np

        images = _checked_images(images)
        return self._call("cnv", method, images) if len(images) else np.zeros((0, *row), dtype=np.int64)

    def _returns_popcounts(self) -> bool:
        if "cnv" not in self.available:
            return False
        from octoray.kernels.fpga_drivers import cnv_output

        return cnv_output(self.available["cnv"][0]) == "popcounts"

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
