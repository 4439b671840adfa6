"""Lanes: the accelerator cards one process drives, one lane per card, each opened once.

``OCTORAY_DEVICE`` unset: every card of the host that no other process holds;
``OCTORAY_DEVICE=N`` or a list (``0,2``): those cards, an error if one is missing or held.
Where there is no card, the CPU is the one lane.

A card is driven by one process at a time.  Each lane holds a lock on its card (an ``flock``
on ``<lock dir>/<kind>-<index>.lock``, released when the process ends, however it ends), so a
Dask worker started without ``OCTORAY_DEVICE`` takes the cards no other worker has taken and
never fights them for one.  The lock folder is ``$OCTORAY_LOCK_DIR`` or
``/tmp/octoray-cards``.  Emulated cards exist inside each process, so they are locked only
where ``OCTORAY_LOCK_DIR`` is set (the tests and the scaling benchmark set it to act as one
host).
"""

from __future__ import annotations

import _thread  # not threading: fgzip's start-up opens the lanes
import os
import sys

from octoray.kernels import ACCELERATOR_KINDS, AcceleratorError, open_accelerator

DEFAULT_LOCK_DIR = "/tmp/octoray-cards"
_tasks_lock = _thread.allocate_lock()


def requested_devices(value: str | None = None) -> list[int] | None:
    """The card indices ``OCTORAY_DEVICE`` names (``1``, ``0,2``), or None for every card."""
    value = (os.environ.get("OCTORAY_DEVICE", "") if value is None else value).strip()
    if not value:
        return None
    indices = []
    for part in value.split(","):
        part = part.strip()
        if not part.isdigit():
            raise AcceleratorError(f"OCTORAY_DEVICE={value!r} is not a card index or a list of them (0,2)")
        if int(part) not in indices:
            indices.append(int(part))
    return indices


def open_lanes(kind: str | None = None) -> list:
    """Open this process's lanes; see the module docstring."""
    kind = (kind or os.environ.get("OCTORAY_ACCELERATOR") or "auto").strip().lower()
    if kind not in ACCELERATOR_KINDS:
        raise AcceleratorError(f"unknown accelerator {kind!r} (expected one of {', '.join(ACCELERATOR_KINDS)})")
    wanted = requested_devices()
    if kind == "cpu":
        return [open_accelerator("cpu")]
    if kind == "auto" and _no_fpga_here():
        return [open_accelerator("auto")]  # the CPU, named with the reason
    from octoray.kernels import FpgaUnavailable

    try:
        found = _count_cards(kind)
    except (FpgaUnavailable, ImportError, OSError, RuntimeError) as error:
        if kind == "auto":
            return [open_accelerator("auto")]
        named = "" if isinstance(error, FpgaUnavailable) else f"{type(error).__name__}: "
        raise AcceleratorError(f"accelerator {kind!r}: {named}{error}") from None
    if found == 0 and kind == "auto":
        return [open_accelerator("auto")]
    explicit = wanted is not None
    lanes, held = [], []
    for index in wanted if explicit else range(found):
        if index >= found:
            raise AcceleratorError(f"accelerator {kind!r}: no card {index} ({found} found)")
        lock = claim_card(kind, index)
        if lock is False:
            held.append(index)
            continue
        try:
            lane = open_accelerator(kind, index)
        except BaseException:
            release(lock)
            close_lanes(lanes)
            raise
        lane.card_lock = lock
        if not getattr(lane, "device_name", None):  # auto fell back to the CPU for this card
            release(lock)
            close_lanes(lanes)
            return [lane]
        lanes.append(lane)
    if held and (explicit or not lanes):
        close_lanes(lanes)
        if kind == "auto" and not explicit:
            return [_cpu_because(_held_words(held))]
        raise AcceleratorError(f"accelerator {kind!r}: {_held_words(held)} "
                               f"({holders(kind, held)}); OCTORAY_DEVICE picks others")
    if not lanes:
        raise AcceleratorError(f"accelerator {kind!r}: no card found")
    return lanes


def close_lanes(lanes: list) -> None:
    for lane in lanes:
        try:
            lane.close()
        finally:
            release(getattr(lane, "card_lock", None))
            lane.card_lock = None


def record_task(lane) -> None:
    """Count a task run on `lane` (`octoray status` shows the counts)."""
    with _tasks_lock:
        lane.tasks_done = getattr(lane, "tasks_done", 0) + 1


# --- cards ---------------------------------------------------------------------------------

def _no_fpga_here() -> bool:
    """The cheap look `auto` takes before importing pynq (fgzip's start-up stays light)."""
    from octoray.kernels import _pynq_on_path

    if "octoray.kernels.fpga" not in sys.modules and not _pynq_on_path():
        return True
    from octoray.kernels.fpga import pynq_missing_reason

    return pynq_missing_reason() is not None


def _pynq_for(kind: str):
    from octoray.kernels import fpga

    if kind == "fpga-emulator":
        from octoray.kernels import fpga_emulator

        return fpga_emulator.shared()
    return fpga.import_pynq()


def _count_cards(kind: str) -> int:
    """How many cards PYNQ sees (asked on a thread with an event loop, as PYNQ needs)."""
    from octoray.kernels.fpga import CardThread

    pynq = _pynq_for(kind)
    thread = CardThread("octoray-count-cards")
    try:
        return len(thread.run(lambda: list(pynq.Device.devices)))
    finally:
        thread.stop()


def _cpu_because(reason: str):
    from octoray.kernels.cpu import CpuAccelerator

    cpu = CpuAccelerator()
    cpu.fallback_reason = reason
    cpu.name = f"cpu (no FPGA: {reason})"
    return cpu


# --- one process per card ------------------------------------------------------------------

def lock_dir(kind: str) -> str | None:
    """Where card locks live; None: emulated cards without OCTORAY_LOCK_DIR, not locked."""
    folder = os.environ.get("OCTORAY_LOCK_DIR", "").strip()
    if folder:
        return folder
    return None if kind == "fpga-emulator" else DEFAULT_LOCK_DIR


def _held_words(held: list[int]) -> str:
    if len(held) == 1:
        return f"card {held[0]} is held by another process"
    return f"cards {', '.join(map(str, held))} are held by other processes"


def _lock_path(kind: str, index: int) -> str | None:
    folder = lock_dir(kind)
    if folder is None:
        return None
    name = "emulated" if kind == "fpga-emulator" else "fpga"  # auto and fpga drive the same cards
    return os.path.join(folder, f"{name}-{index}.lock")


def claim_card(kind: str, index: int):
    """The lock on card `index` (an open descriptor), None where cards are not locked, or
    False when another process holds it."""
    import fcntl

    path = _lock_path(kind, index)
    if path is None:
        return None
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, mode=0o1777, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except FileExistsError:  # makedirs: the lock folder's name is taken by a file
        raise AcceleratorError(f"cannot lock card {index}: the lock folder {folder} is not a directory "
                               f"(OCTORAY_LOCK_DIR)") from None
    except OSError as error:
        raise AcceleratorError(f"cannot lock card {index} ({path}: {error.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release(lock) -> None:
    if lock:
        os.close(lock)  # closing the descriptor releases the flock


def holders(kind: str, indices: list[int]) -> str:
    pids = []
    for index in indices:
        try:
            with open(_lock_path(kind, index) or "", encoding="ascii") as f:
                pids.append(f"card {index}: pid {f.read().strip() or '?'}")
        except OSError:
            pids.append(f"card {index}: pid ?")
    return ", ".join(pids)
