"""CPU kernels: ISA-L for the fast gzip levels, zlib-ng for the rest (measured choice, see
benchmarks/README.md).  Both release the GIL, so threads scale across cores."""

from __future__ import annotations

# level -> (library, library level), measured on Silesia (benchmarks/README.md):
# - ISA-L is several times faster than zlib; its level 2 runs as fast as its level 1 here and
#   writes 1.5 % less than gzip -1 (level 1: 0.8 % more), so -1 uses it.  ISA-L takes a
#   preset dictionary, so each chunk is primed with the previous chunk's last 32 KiB.
# - libdeflate at each level 4-9 writes less than gzip at the same level, 1.5-3x faster than
#   zlib-ng, even with chunks compressed independently (it has no preset dictionary).  It
#   writes complete streams, which deflate_join makes joinable.
GZIP_LEVELS = {
    0: ("libdeflate", 0),
    1: ("isal", 2), 2: ("isal", 2), 3: ("isal", 3),
    **{level: ("libdeflate", level) for level in range(4, 10)},
}


def deflate_sync_flushed(data, dictionary: bytes | None, level: int) -> bytes:
    """Raw deflate ending byte-aligned without the final-block bit, ready to be joined.

    `dictionary` primes the compressor where the library can take one (ISA-L)."""
    library, library_level = GZIP_LEVELS[level]
    if library == "isal":
        from isal import isal_zlib

        if dictionary:
            compressor = isal_zlib.compressobj(library_level, isal_zlib.DEFLATED, -15, 9, 0, zdict=dictionary)
        else:
            compressor = isal_zlib.compressobj(library_level, isal_zlib.DEFLATED, -15, 9, 0)
        return compressor.compress(data) + compressor.flush(isal_zlib.Z_SYNC_FLUSH)
    import deflate

    from octoray.formats.deflate_join import unfinish

    return unfinish(deflate.deflate_compress(data, library_level))


class CpuAccelerator:
    name = "cpu"

    def deflate(self, data, dictionary: bytes | None, level: int) -> bytes:
        return deflate_sync_flushed(data, dictionary, level)

    def close(self) -> None:
        pass
