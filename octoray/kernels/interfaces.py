"""The accelerator interface every kernel module implements (cpu.py, fpga.py).

A typing.Protocol, kept out of the start-up path: the implementations satisfy it
structurally, and tests/test_fpga.py checks that they do.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Accelerator(Protocol):
    name: str
    """How `octoray status` and -v describe it: ``cpu``, ``fpga:0 gzip_u50``, ..."""
    fallback_reason: str | None
    """Why some work runs on the CPU instead of the card (None: nothing falls back)."""

    def deflate(self, data: Any, level: int, last: bool, strategy: str | None = None) -> bytes:
        """Raw deflate of `data` on its own: level 0-9 or 11 (pigz's strongest), strategy None,
        "huffman" or "rle".  The last chunk ends
        the deflate stream; any other ends byte-aligned without the final-block bit, so the
        next chunk's data can follow it.  A variant the kernel cannot do runs on its fallback
        or raises FpgaUnavailable saying so."""

    def cnv_scores(self, images: Any, popcounts: bool = False) -> Any:
        """CNV-W1A1 on a batch: uint8 images (N, 32, 32, 3) -> int64 (N, 10) scores whose
        argmax (the lowest index winning a tie) is the class.  CPU kernels return fc3
        popcounts, and so does a card whose overlay ends at fc3; a card with FINN's usual
        top-1 output returns its class as a one-hot row.  `popcounts` asks for the popcounts
        themselves (--top-k prints them, summing views needs them): a card that returns only
        its top-1 class runs such a batch on its fallback, or raises FpgaUnavailable saying so."""

    def close(self) -> None:
        """Release the card (and the fallback's resources)."""
