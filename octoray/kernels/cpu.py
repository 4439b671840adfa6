"""CPU kernels: ISA-L for the fast gzip levels, libdeflate for the rest (measured choice:
the figures below, and benchmarks/gzip_bench.py).  Both release the GIL, so threads scale
across cores."""

from __future__ import annotations

# level -> (library, library level), measured on Silesia:
# - ISA-L is several times faster than zlib; its level 2 runs as fast as its level 1 here and
#   writes 1.5 % less than gzip -1 (level 1: 0.8 % more), so -1 uses it.  ISA-L takes a
#   preset dictionary, so each chunk is primed with the previous chunk's last 32 KiB.
# - libdeflate is 1.2-2x faster than zlib-ng at equal size, even with chunks compressed
#   independently (it takes no preset dictionary).  Its levels 4, 5, 6, 7 and 9 write less
#   than gzip -4, -5, -7, -8 and -9.  For the default -6 its level 5 is 22 % faster than its
#   level 6 and writes 0.45 % more than gzip -6 (level 6: 0.8 % less).  It writes complete
#   streams, which deflate_join makes joinable.
GZIP_LEVELS = {
    0: ("libdeflate", 0),
    1: ("isal", 2), 2: ("isal", 2), 3: ("isal", 3),
    4: ("libdeflate", 4), 5: ("libdeflate", 5), 6: ("libdeflate", 5),
    7: ("libdeflate", 6), 8: ("libdeflate", 7), 9: ("libdeflate", 9),
}


def deflate_chunk(data, dictionary: bytes | None, level: int, last: bool) -> bytes:
    """Raw deflate of one chunk: complete if `last`, else byte-aligned without the final-block
    bit, ready for the next chunk.  `dictionary` primes the compressor where the library
    can take one (ISA-L)."""
    library, library_level = GZIP_LEVELS[level]
    if library == "isal":
        from isal import isal_zlib

        if dictionary:
            compressor = isal_zlib.compressobj(library_level, isal_zlib.DEFLATED, -15, 9, 0, zdict=dictionary)
        else:
            compressor = isal_zlib.compressobj(library_level, isal_zlib.DEFLATED, -15, 9, 0)
        return compressor.compress(data) + compressor.flush(isal_zlib.Z_FINISH if last else isal_zlib.Z_SYNC_FLUSH)
    import deflate

    complete = deflate.deflate_compress(data, library_level)
    if last:
        return complete
    from octoray.formats.deflate_join import unfinish

    return unfinish(complete)


class CpuAccelerator:
    name = "cpu"

    def __init__(self):
        self._cnv = None

    def cnv_scores(self, images):
        from octoray.kernels import cnv_cpu

        if self._cnv is None:  # loaded on first use: fgzip never pays for the model
            from octoray.formats.cnv_model import CnvModel

            self._cnv = cnv_cpu.PackedModel(CnvModel.load())
        return cnv_cpu.fc3_popcounts(self._cnv, images)

    def deflate(self, data, dictionary: bytes | None, level: int, last: bool) -> bytes:
        return deflate_chunk(data, dictionary, level, last)

    def close(self) -> None:
        pass
