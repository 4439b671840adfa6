"""The CPU kernels: ISA-L for the fast gzip levels, libdeflate for the rest, zlib for pigz's
strategies.  All release the GIL, so threads scale across cores.  Why each level uses the
library it does is measured in docs/design.md (benchmarks/gzip_bench.py)."""

from __future__ import annotations

# level -> (library, library level); 11 is pigz's zopfli level, libdeflate's strongest here
GZIP_LEVELS = {
    0: ("libdeflate", 0),
    1: ("isal", 2), 2: ("isal", 3), 3: ("libdeflate", 1),
    4: ("libdeflate", 4), 5: ("libdeflate", 5), 6: ("libdeflate", 5),
    7: ("libdeflate", 6), 8: ("libdeflate", 7), 9: ("libdeflate", 9),
    11: ("libdeflate", 12),
}
STRATEGIES = {"huffman": 2, "rle": 3}  # zlib's Z_HUFFMAN_ONLY and Z_RLE (pigz -H, -U)


def deflate_chunk(data, level: int, last: bool, strategy: str | None = None) -> bytes:
    """Raw deflate of one chunk on its own (no window from the chunk before, so that chunks
    decode in parallel): complete if `last`, else byte-aligned without the final-block bit,
    ready for the next chunk."""
    if strategy is not None:
        return _zlib_flushed(data, min(level, 9), last, STRATEGIES[strategy])
    library, library_level = GZIP_LEVELS[level]
    if library == "isal":
        out = _isal_flushed(data, library_level, last)
    else:
        import deflate

        out = deflate.deflate_compress(data, library_level)
        if not last:
            from octoray.formats.deflate_join import unfinish

            out = unfinish(out)
    if level and len(data) <= SMALL_INPUT:  # microseconds, and a tiny file's output is gzip's size
        out = min(out, _zlib_flushed(data, min(level, 9), last, 0), key=len)
    return out


# Up to about this many bytes zlib's output is the shortest: libdeflate stores inputs of up to
# ~55 bytes (3 bytes more than a fixed-code block) and ISA-L's level 1 spends a few more
SMALL_INPUT = 256


def _isal_flushed(data, level: int, last: bool) -> bytes:
    from isal import isal_zlib

    compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15, 9, 0)
    return compressor.compress(data) + compressor.flush(isal_zlib.Z_FINISH if last else isal_zlib.Z_SYNC_FLUSH)


def _zlib_flushed(data, level: int, last: bool, strategy: int) -> bytes:
    import zlib

    compressor = zlib.compressobj(level, zlib.DEFLATED, -15, 9, strategy)
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


class CpuAccelerator:
    """The host's CPU: every deflate variant and the CNV-W1A1 kernel (octoray.kernels.cnv_cpu)."""

    name = "cpu"
    fallback_reason: str | None = None  # set when the CPU stands in for a card that is not there

    def __init__(self, fallback_reason: str | None = None):
        self._cnv = None
        if fallback_reason is not None:
            self.fallback_reason = fallback_reason
            self.name = f"cpu (no FPGA: {fallback_reason})"

    def cnv_scores(self, images, popcounts: bool = False):
        from octoray.kernels import cnv_cpu

        if self._cnv is None:  # loaded on first use: fgzip never pays for the model
            from octoray.formats.cnv_model import CnvModel

            self._cnv = cnv_cpu.PackedModel(CnvModel.load())
        return cnv_cpu.fc3_popcounts(self._cnv, images)

    def deflate(self, data, level: int, last: bool, strategy: str | None = None) -> bytes:
        return deflate_chunk(data, level, last, strategy)

    def close(self) -> None:
        pass
