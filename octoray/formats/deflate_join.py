"""Make a complete raw deflate stream joinable: clear its final-block bit and end it with an
empty stored block (what a sync flush writes), so that more chunks can follow it.

libdeflate compresses best per CPU second at gzip's middle levels but only writes complete
streams, with the final-block bit (BFINAL) on its last block.  Blocks are not
self-delimiting, so finding where the last one starts means walking the stream: zlib's
inflate with Z_BLOCK stops at every block boundary and reports the bit position, and it
is reached through ctypes (the GIL is released during the call).
"""

from __future__ import annotations

import ctypes
import threading

Z_OK, Z_BLOCK = 0, 5
_OUT_SIZE = 256 * 1024


class _ZStream(ctypes.Structure):
    _fields_ = [
        ("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint), ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint), ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p), ("zfree", ctypes.c_void_p), ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int), ("adler", ctypes.c_ulong), ("reserved", ctypes.c_ulong),
    ]
    # zlib-ng's native zng_stream differs only in `adler` (uint32_t, padded here to 8 bytes)


class JoinUnavailable(RuntimeError):
    """The system zlib could not be loaded."""


_zlib = None
_zlib_lock = threading.Lock()
_scratch = threading.local()


class _Inflater:
    """inflateInit2 / inflate / inflateEnd from zlib-ng (twice zlib's speed) or zlib."""

    def __init__(self):
        lib, prefix = self._zlib_ng()
        if lib is None:
            from ctypes.util import find_library

            name = find_library("z") or "libz.so.1"
            try:
                lib, prefix = ctypes.CDLL(name), ""
            except OSError as error:
                raise JoinUnavailable(f"cannot load zlib ({name}): {error}") from None
        self.inflate = getattr(lib, prefix + "inflate")
        self.inflate.argtypes = [ctypes.POINTER(_ZStream), ctypes.c_int]
        self.end = getattr(lib, prefix + "inflateEnd")
        self.end.argtypes = [ctypes.POINTER(_ZStream)]
        if prefix:
            self.init = lib.zng_inflateInit2
            self.init.argtypes = [ctypes.POINTER(_ZStream), ctypes.c_int]
        else:  # zlib's inflateInit2 is a macro over inflateInit2_(strm, bits, version, size)
            version = lib.zlibVersion
            version.restype = ctypes.c_char_p
            init_ = lib.inflateInit2_
            init_.argtypes = [ctypes.POINTER(_ZStream), ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            self.init = lambda z, bits: init_(z, bits, version(), ctypes.sizeof(_ZStream))

    @staticmethod
    def _zlib_ng():
        """The zlib-ng that the zlib-ng package carries exports its native zng_ API."""
        try:
            from zlib_ng import zlib_ng

            lib = ctypes.CDLL(zlib_ng.__file__)
            lib.zng_inflateInit2, lib.zng_inflate, lib.zng_inflateEnd  # noqa: B018 - present?
            return lib, "zng_"
        except (ImportError, OSError, AttributeError):
            return None, ""


def _load_zlib() -> _Inflater:
    global _zlib
    with _zlib_lock:
        if _zlib is None:
            _zlib = _Inflater()
    return _zlib


def final_block_bits(stream: bytes | bytearray) -> tuple[int, int]:
    """(bit offset where the last block starts, bit offset just past its end-of-block code)."""
    lib = _load_zlib()
    out = getattr(_scratch, "out", None)
    if out is None:
        out = _scratch.out = ctypes.create_string_buffer(_OUT_SIZE)
    z = _ZStream()
    if lib.init(ctypes.byref(z), -15) != Z_OK:
        raise MemoryError("inflateInit2 failed")
    if isinstance(stream, bytearray):
        source = (ctypes.c_char * len(stream)).from_buffer(stream)
    else:
        source = ctypes.c_char_p(bytes(stream))  # points into a bytes object kept alive here
    try:
        z.next_in = ctypes.cast(source, ctypes.c_void_p)
        z.avail_in = len(stream)
        last_start = 0
        while True:
            z.next_out = ctypes.addressof(out)
            z.avail_out = _OUT_SIZE
            code = lib.inflate(ctypes.byref(z), Z_BLOCK)
            if code != Z_OK:  # Z_BLOCK stops after the last block, before Z_STREAM_END
                raise ValueError(f"not a complete deflate stream (zlib code {code})")
            if z.data_type & 128:  # just past an end-of-block code, fewer than 8 bits unused
                position = z.total_in * 8 - (z.data_type & 7)
                if z.data_type & 64:
                    return last_start, position
                last_start = position  # the next block starts here
    finally:
        lib.end(ctypes.byref(z))


def unfinish(stream: bytes | bytearray) -> bytes:
    """The same data as `stream`, without BFINAL and ending byte-aligned, ready for more."""
    start, end = final_block_bits(stream)
    out = bytearray(stream[: (end + 7) // 8])
    out[start >> 3] &= ~(1 << (start & 7)) & 0xFF
    spare = -end % 8
    if spare:
        out[-1] &= (1 << (8 - spare)) - 1  # zero the bits after the end-of-block code
    # an empty stored block: 3 header bits, padding to a byte boundary, LEN=0, NLEN=0xFFFF
    out += b"\x00\x00\xff\xff" if spare >= 3 else b"\x00\x00\x00\xff\xff"
    return bytes(out)
