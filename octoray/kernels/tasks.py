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


def classify_batch(batch, views: int = 1, popcounts: bool = False) -> tuple:
    """Decode a batch (an engine JobGroup of one-item jobs: encoded image bytes, or pixels
    already (32, 32, 3)), run CNV-W1A1 on `views` views of each image that decoded
    (octoray.formats.cnv_views), and return (scores (N, 10) summed over the views, error
    reasons (None where fine)).  `popcounts`: the scores must be fc3's popcounts (they are
    printed), which a card that returns only its top-1 class cannot give.

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
        return _view_scores(np.stack(pixels), views, popcounts), reasons
    scores = np.zeros((len(payloads), 10), dtype=np.int64)
    if decoded:
        scores[decoded] = _view_scores(np.stack(pixels), views, popcounts)
    return scores, reasons


def _view_scores(images, count: int, popcounts: bool = False):
    """fc3 popcounts of the images summed over `count` views, in one kernel call."""
    from octoray.formats.cnv_views import summed, views

    return summed(local_accelerator().cnv_scores(views(images, count), popcounts=popcounts or count > 1), count)
