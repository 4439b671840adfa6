"""Chunked gzip members for tests, made the way fgzip's compressor makes them: each chunk
deflated on its own by the level's kernel, every chunk but the last ended byte-aligned."""

from __future__ import annotations

from octoray.formats import gzip as gz
from octoray.formats import gzip_chunks
from octoray.kernels.cpu import deflate_chunk


def deflated_chunks(data: bytes, chunk_size: int, level: int = 6, cuts: list[int] | None = None) -> list[bytes]:
    """Compressed chunks of `data`: cut every `chunk_size` bytes, or at `cuts` (a variable
    layout); at least one chunk, the last one ending the stream."""
    if cuts is None:
        cuts = list(range(chunk_size, len(data), chunk_size))
    edges = [0, *cuts, len(data)]
    pieces = [data[a:b] for a, b in zip(edges, edges[1:])]
    return [bytes(deflate_chunk(piece, level, i == len(pieces) - 1)) for i, piece in enumerate(pieces)]


def primed_chunk(piece: bytes, window: bytes | None, level: int, last: bool) -> bytes:
    """A chunk deflated with the data before it as its window (as gzip -1 joins blocks, and as
    fgzip's chunks are not): raw deflate, complete if `last`, else ended byte-aligned."""
    import zlib

    compressor = zlib.compressobj(min(level, 9), zlib.DEFLATED, -15, 9, **({"zdict": window} if window else {}))
    return compressor.compress(piece) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def chunked_member(data: bytes, chunk_size: int = 1 << 16, *, level: int = 6, index: bool = True,
                   cuts: list[int] | None = None, name: bytes | None = None) -> bytes:
    """One gzip member announcing its chunks, with an index of their sizes if `index`."""
    chunks = deflated_chunks(data, chunk_size, level, cuts)
    slots = min(len(chunks), gzip_chunks.MAX_SLOTS) if index else 0
    head, at = gzip_chunks.header(name, 0, level, chunk_size=chunk_size, slots=slots, variable=cuts is not None)
    out = bytearray(head)
    out[at:at + 4 * slots] = gzip_chunks.index_bytes([len(c) for c in chunks], slots)
    out += b"".join(chunks) + gz.trailer(gz.crc32(data), len(data))
    return bytes(out)
