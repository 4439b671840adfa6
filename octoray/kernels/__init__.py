"""Accelerators: one module per kind (CPU, FPGA through PYNQ, FPGA emulator), one interface.

Each process (the embedded default, or a Dask worker) opens its accelerator once, chosen by
``OCTORAY_ACCELERATOR`` (auto|cpu|fpga|fpga-emulator) and ``OCTORAY_DEVICE`` (card index),
and every task in that process reaches it through :func:`local_accelerator`.  What every
accelerator offers is the Protocol in octoray.kernels.interfaces.
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


def open_accelerator(kind: str | None = None, device: int | None = None) -> Accelerator:
    kind = (kind or os.environ.get("OCTORAY_ACCELERATOR") or "auto").strip().lower()
    if kind not in ACCELERATOR_KINDS:
        raise AcceleratorError(f"unknown accelerator {kind!r} (expected one of {', '.join(ACCELERATOR_KINDS)})")
    if kind == "cpu":
        from octoray.kernels.cpu import CpuAccelerator

        return CpuAccelerator()
    if kind == "auto":
        return _auto_accelerator(device)
    from octoray.kernels.fpga import FpgaAccelerator, FpgaUnavailable

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
    """A quick look for pynq (importlib.machinery is loaded already; importlib.util is not)."""
    import importlib.machinery

    return "pynq" in sys.modules or importlib.machinery.PathFinder.find_spec("pynq") is not None


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
        from octoray.kernels.fpga import FpgaAccelerator, FpgaUnavailable

        try:
            return FpgaAccelerator(device, kind="fpga", fallback=CpuAccelerator())
        except FpgaUnavailable as error:
            reason = str(error)
        except (ImportError, OSError, RuntimeError) as error:
            reason = f"pynq failed: {type(error).__name__}: {error}"
    return CpuAccelerator(fallback_reason=reason)


_lock = _thread.allocate_lock()
_local: Accelerator | None = None


def local_accelerator() -> Accelerator:
    """This process's accelerator, opened on first use and kept for every later task."""
    global _local
    if _local is None:
        with _lock:
            if _local is None:
                _local = open_accelerator()
    return _local


def install_local_accelerator(accelerator: Accelerator | None) -> Accelerator | None:
    """Make `accelerator` this process's one (a Dask worker plugin does this); returns the old one."""
    global _local
    with _lock:
        previous, _local = _local, accelerator
    return previous
