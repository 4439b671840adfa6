"""Accelerators: one module per kind (CPU, FPGA through PYNQ, FPGA emulator), one interface.

Each process (the embedded default, or a Dask worker) opens its accelerators once, chosen by
``OCTORAY_ACCELERATOR`` (auto|cpu|fpga|fpga-emulator) and ``OCTORAY_DEVICE`` (card indices):
one lane per card (octoray.kernels.lanes), and every task reaches its thread's lane through
:func:`local_accelerator`.  What every accelerator offers is the Protocol in
octoray.kernels.interfaces.
"""

from __future__ import annotations

import os
import sys
import _thread  # not threading, whose import fgzip's start-up avoids (docs/design.md)

ACCELERATOR_KINDS = ("auto", "cpu", "fpga", "fpga-emulator")

TYPE_CHECKING = False  # the Protocol's module imports typing, which fgzip's start-up avoids
if TYPE_CHECKING:
    from octoray.kernels.interfaces import Accelerator


class AcceleratorError(RuntimeError):
    """The requested accelerator cannot be opened."""


class FpgaUnavailable(AcceleratorError):
    """No usable card (or overlay) for an FPGA accelerator, or for a variant of a call; the
    message says why.  Opening the FPGA turns it into an AcceleratorError naming the kind, or
    into the CPU fallback under auto."""


def open_accelerator(kind: str | None = None, device: int | None = None) -> Accelerator:
    kind = (kind or os.environ.get("OCTORAY_ACCELERATOR") or "auto").strip().lower()
    if kind not in ACCELERATOR_KINDS:
        raise AcceleratorError(f"unknown accelerator {kind!r} (expected one of {', '.join(ACCELERATOR_KINDS)})")
    if kind == "cpu":
        from octoray.kernels.cpu import CpuAccelerator

        return CpuAccelerator()
    if kind == "auto":
        return _auto_accelerator(device)
    from octoray.kernels.fpga import FpgaAccelerator

    try:
        if kind == "fpga-emulator":
            from octoray.kernels import fpga_emulator

            return FpgaAccelerator(device, pynq_module=fpga_emulator.shared(), kind=kind)
        return FpgaAccelerator(device, kind=kind)
    except FpgaUnavailable as error:
        raise AcceleratorError(f"accelerator {kind!r}: {error}") from None
    except (ImportError, OSError, RuntimeError) as error:  # pynq / XRT failing on their own
        raise AcceleratorError(f"accelerator {kind!r}: {type(error).__name__}: {error}") from None


def _pynq_on_path() -> bool:
    """A quick look for pynq, asking the import system's finders themselves: importlib.util
    (or importlib.machinery) would cost every fgzip run about a millisecond to import."""
    if "pynq" in sys.modules:
        return True
    return any(hasattr(finder, "find_spec") and finder.find_spec("pynq", None) is not None
               for finder in sys.meta_path)


def _auto_accelerator(device: int | None) -> Accelerator:
    """An FPGA where pynq imports, a card is there and an overlay's xclbin is installed (the
    CPU doing what no xclbin is installed for); else the CPU, whose ``fallback_reason`` and
    ``name`` say why: ``cpu (no FPGA: pynq not installed)``."""
    from octoray.kernels.cpu import CpuAccelerator

    if "octoray.kernels.fpga" not in sys.modules and not _pynq_on_path():
        reason = "pynq not installed"  # without importing the drivers' module (start-up)
    else:
        from octoray.kernels.fpga import pynq_missing_reason

        reason = pynq_missing_reason()  # cheap checks first: no import of pynq where it cannot serve
    if reason is None:
        from octoray.kernels.fpga import FpgaAccelerator

        try:
            return FpgaAccelerator(device, kind="fpga", fallback=CpuAccelerator())
        except FpgaUnavailable as error:
            reason = str(error)
        except (ImportError, OSError, RuntimeError) as error:
            reason = f"pynq failed: {type(error).__name__}: {error}"
    return CpuAccelerator(fallback_reason=reason)


_lock = _thread.allocate_lock()
_local: Accelerator | None = None
_lanes: list | None = None  # every card this process drives (octoray.kernels.lanes)
_generation = 0  # bumped when the lanes are replaced: threads pinned before re-pin
_pinned = _thread._local()
_next_lane = 0


def local_accelerator() -> Accelerator:
    """The accelerator of this thread: its lane, one of this process's cards, pinned on the
    thread's first call (round robin) unless :func:`pin_thread` chose one."""
    pinned = getattr(_pinned, "lane", None)
    if pinned is not None and _pinned.generation == _generation:
        return pinned
    global _next_lane
    lanes = local_lanes()
    with _lock:
        lane = lanes[_next_lane % len(lanes)]
        _next_lane += 1
        _pinned.lane, _pinned.generation = lane, _generation
    return lane


def local_lanes() -> list:
    """This process's lanes, opened on first use and kept for every later task: every card
    (``OCTORAY_DEVICE`` restricts them), or the CPU where there is none."""
    global _lanes, _local
    if _lanes is None:
        with _lock:
            if _lanes is None:
                from octoray.kernels.lanes import open_lanes

                _lanes = open_lanes()
                _local = _lanes[0]
    return _lanes


def pin_thread(lane: Accelerator) -> None:
    """Make `lane` this thread's accelerator (an executor's thread for one card)."""
    _pinned.lane, _pinned.generation = lane, _generation


def install_local_accelerator(accelerator) -> Accelerator | None:
    """Make `accelerator` (or a list of lanes) this process's (a Dask worker plugin does this);
    returns the old first lane.  None forgets them: the next use opens them again."""
    global _local, _lanes, _generation
    lanes = None if accelerator is None else list(accelerator) if isinstance(accelerator, (list, tuple)) else [accelerator]
    with _lock:
        previous = _local
        _lanes, _local = lanes, lanes[0] if lanes else None
        _generation += 1
    return previous
