"""CPU kernels: ISA-L for the fast gzip levels, zlib-ng for the rest (measured choice, see
benchmarks/README.md).  Both release the GIL, so threads scale across cores."""

from __future__ import annotations

# level -> (library, library level).  ISA-L is several times faster than zlib; its level 2
# runs as fast as its level 1 here and writes 1.5 % less than gzip -1 on Silesia (level 1:
# 0.8 % more), so -1 uses it.  zlib-ng's level 6 stays within 1 % of gzip -6.
GZIP_LEVELS = {
    0: ("zlib-ng", 0),
    1: ("isal", 2), 2: ("isal", 2), 3: ("isal", 3),
    4: ("zlib-ng", 4), 5: ("zlib-ng", 5), 6: ("zlib-ng", 6),
    7: ("zlib-ng", 7), 8: ("zlib-ng", 8), 9: ("zlib-ng", 9),
}


def _library(name: str):
    if name == "isal":
        from isal import isal_zlib

        return isal_zlib
    from zlib_ng import zlib_ng

    return zlib_ng


def deflate_sync_flushed(data, dictionary: bytes | None, level: int) -> bytes:
    """Raw deflate ending in a sync flush: byte-aligned and without the final-block bit."""
    library, library_level = GZIP_LEVELS[level]
    lib = _library(library)
    if dictionary:
        compressor = lib.compressobj(library_level, lib.DEFLATED, -15, 9, 0, zdict=dictionary)
    else:
        compressor = lib.compressobj(library_level, lib.DEFLATED, -15, 9, 0)
    return compressor.compress(data) + compressor.flush(lib.Z_SYNC_FLUSH)


class CpuAccelerator:
    name = "cpu"

    def deflate(self, data, dictionary: bytes | None, level: int) -> bytes:
        return deflate_sync_flushed(data, dictionary, level)

    def close(self) -> None:
        pass
