"""Task functions: what a worker (thread or Dask worker) runs for one chunk.

They are plain module-level functions so that Dask can ship them by reference; each one
finds the accelerator of the process it runs in.
"""

from __future__ import annotations

from octoray.formats.gzip import DeflatedChunk, crc32
from octoray.kernels import local_accelerator


def deflate_chunk(data, dictionary: bytes | None, level: int, last: bool = False) -> DeflatedChunk:
    compressed = local_accelerator().deflate(data, dictionary, level, last)
    return DeflatedChunk(compressed, crc32(data), len(data), last)


def cnv_scores(images):
    """fc3 popcounts (N, 10) of a batch of uint8 images (N, 32, 32, 3)."""
    return local_accelerator().cnv_scores(images)
