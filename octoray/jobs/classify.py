"""The classify job: the images fclassify reads (octoray.jobs.classify_inputs), classified in
batches on the engine, the results handed back in input order.  This module knows the engine,
not the command line: the CLI passes options in and prints what comes out.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator

from octoray.engine.stream import JobGroup, batched, ordered_map
from octoray.jobs import DEFAULT_BATCH
from octoray.jobs.classify_inputs import Item

REMOTE_BYTES = 1 << 20  # what a cluster's worker is sent to decode: larger images decode here,
# and a batch closes at this many encoded bytes (a cluster holds many batches in flight)


@dataclass
class Result:
    name: str
    scores: object = None  # (10,) int64 fc3 popcounts; None when `error` says why not
    error: str | None = None
    best: int = -1  # the class: the highest score, the lowest index among equals
    batch_end: bool = False  # the last result of its batch: the next may be a while coming



def _decode(item: Item) -> None:
    """The item's encoded payload replaced by its pixels, or a failure by the item's error."""
    from octoray.formats.images import ImageError, decode_image

    try:
        item.payload = decode_image(item.payload)
    except ImageError as error:
        item.payload, item.error = None, str(error)


def _decoded(stream: Iterable[Item]) -> Iterator[Item]:
    """The items with their images decoded, each as soon as it is read."""
    for item in stream:
        if item.error is None and isinstance(item.payload, (bytes, bytearray)):
            _decode(item)
        yield item


def _remote_groups(stream: Iterable[Item], batch: int) -> Iterator[list]:
    """Lists of `batch` consecutive items for a cluster's workers to decode, a list closed early
    at REMOTE_BYTES encoded bytes; an image larger than that is decoded here."""
    group: list = []
    encoded = 0
    for item in stream:
        if item.error is None and isinstance(item.payload, (bytes, bytearray)):
            if len(item.payload) > REMOTE_BYTES:
                _decode(item)
            else:
                encoded += len(item.payload)
        group.append(item)
        if len(group) == batch or encoded >= REMOTE_BYTES:
            yield group
            group, encoded = [], 0
    if group:
        yield group


def classify(stream: Iterable[Item], executor, batch: int = DEFAULT_BATCH, views: int = 1,
             popcounts: bool = False) -> Iterator[Result]:
    """Results for `stream`, in its order; batches run in parallel on `executor`.  Each image's
    scores are summed over `views` views of it (octoray.formats.cnv_views); `popcounts`: they
    are fc3's popcounts, not a card's one-hot top-1 rows (they are shown).  The last result of
    each batch says so (`batch_end`): results come a batch at a time."""
    from octoray.kernels.tasks import classify_batch

    sent: deque = deque()

    # In this process the reader decodes, an image as soon as it is read: the workers then
    # spend their time in the kernel, which runs without the GIL, instead of contending for it
    # with the reader, and no batch holds encoded images.  A cluster's workers decode (the
    # encoded images are smaller to send, and the decoding spreads out).
    decode_here = executor.in_process
    # Image files a cluster's workers can read (the same host, or a shared filesystem) travel as
    # paths, and each worker reads its own; asked once, with the first file.
    offer = None if decode_here else getattr(executor, "shared_paths", None)
    paths_shared = None

    def jobs():
        nonlocal paths_shared
        groups = batched(_decoded(stream), batch) if decode_here else _remote_groups(stream, batch)
        for group in groups:
            sent.append(group)
            payloads = []
            for item in group:
                payload = item.payload if item.error is None else None
                if offer is not None and item.source is not None and isinstance(payload, bytes):
                    if paths_shared is None:
                        paths_shared = offer(*item.source)
                    if paths_shared:
                        from octoray.engine.file_ranges import whole_file

                        payload = whole_file(*item.source)
                payloads.append(payload)
            if not decode_here:
                for item in group:
                    item.payload = None  # encoded bytes: the batch holds them, until its task is done
            # one JobGroup object: Dask would scatter a list
            yield JobGroup([(payload,) for payload in payloads]), views, popcounts

    for scores, reasons in ordered_map(classify_batch, jobs(), executor):
        group = sent.popleft()
        best = scores.argmax(axis=1).tolist()  # numpy's argmax: the first of equal maxima
        last = len(group) - 1
        for i, (item, row, reason, label) in enumerate(zip(group, scores, reasons, best)):
            error = item.error or reason
            yield Result(item.name, None if error else row, error, label, i == last)
