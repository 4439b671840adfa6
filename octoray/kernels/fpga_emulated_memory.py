"""The emulated cards' memory (PYNQ's buffers and banks) and the emulator's error: what both
the emulated devices (fpga_emulator.py) and their kernels (fpga_emulated_kernels.py) use."""

from __future__ import annotations

import time

import numpy as np


def pace(started: float, amount: float, rate: float | None) -> None:
    """Sleep until `amount` units at `rate` per second have passed since `started`."""
    if rate:
        left = started + amount / rate - time.monotonic()
        if left > 0:
            time.sleep(left)


class EmulatorError(RuntimeError):
    """A use of the emulated card that real hardware would reject, hang on or get wrong."""


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


