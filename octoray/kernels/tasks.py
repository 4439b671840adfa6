"""Task functions: what a worker (thread or Dask worker) runs for one chunk.

They are plain module-level functions so that Dask can ship them by reference; each one
finds the accelerator of the process it runs in.
"""

from __future__ import annotations

from octoray.formats.gzip import DeflatedChunk, crc32
from octoray.kernels import local_accelerator


def deflate_chunk(data, level: int, last: bool = False, strategy: str | None = None) -> DeflatedChunk:
    """Deflate one chunk on this process's accelerator; the chunk's CRC-32 is computed here,
    for every kernel and variant, where the data already is."""
    compressed = local_accelerator().deflate(data, level, last, strategy)
    return DeflatedChunk(compressed, crc32(data), len(data), last)


def cnv_scores(images):
    """fc3 popcounts (N, 10) of a batch of uint8 images (N, 32, 32, 3)."""
    return local_accelerator().cnv_scores(images)


def classify_batch(batch) -> tuple:
    """Decode a batch (an engine JobGroup of one-item jobs: encoded image bytes, or pixels
    already (32, 32, 3)), run CNV-W1A1 on
    the images that decoded, and return (scores (N, 10), error reasons (None where fine)).

    Decoding here, not in the reader, spreads it over the workers with the kernel.  A None
    payload is an item that already failed upstream; it gets zero scores and no reason."""
    import numpy as np

    from octoray.formats.images import ImageError, decode_image

    payloads = [job[0] for job in batch.jobs]
    reasons: list = [None] * len(payloads)
    pixels, decoded = [], []
    for i, payload in enumerate(payloads):
        if payload is None:
            continue
        if not isinstance(payload, np.ndarray):
            try:
                payload = decode_image(payload)
            except ImageError as error:
                reasons[i] = str(error)
                continue
        pixels.append(payload)
        decoded.append(i)
    if len(decoded) == len(payloads):  # the usual case: every image decoded
        return local_accelerator().cnv_scores(np.stack(pixels)), reasons
    scores = np.zeros((len(payloads), 10), dtype=np.int64)
    if decoded:
        scores[decoded] = local_accelerator().cnv_scores(np.stack(pixels))
    return scores, reasons
