"""The other formats gzip and pigz decompress, found by their first bytes and decoded as a
member of the stream that octoray.jobs.gunzip walks.

gzip reads compress's LZW (1f 9d) and pack (1f 1e) wherever a member may start, and a zip
file's first entry (PK 3 4) at the very start of the input; pigz also reads a zlib stream
(`pigz -z`, .zz) there.  LZW and zip end the input as gzip reads it (LZW runs to the end, the
rest of a zip is left unread); after a pack stream or a zlib stream, what follows is read as
after a gzip member (another member, trailing data, or -cdf's copy).  The format modules
raise octoray.formats.faults types, which each command line words its own way.
"""

from __future__ import annotations

from octoray.formats import faults

LZW_MAGIC = b"\x1f\x9d"
PACK_MAGIC = b"\x1f\x1e"
ZIP_MAGIC = b"PK\x03\x04"
ZLIB_OVERHEAD = 6  # header and Adler-32: left out of gzip -l's ratio, like a gzip header
GZIP_READ_SIZE = 0x40000  # gzip reads its input in pieces this large (INBUFSIZ)
PASSTHROUGH_LIMIT = 4 << 20  # input held back while a -cdf input may yet prove not zlib


class ForeignHeader:
    """What gzip -l and -v know of a member in another format: no name nor time, gzip -lv's
    method, and the bytes left out of the ratio (gzip counts none for these formats)."""

    __slots__ = ("method", "overhead", "name", "mtime", "length")

    def __init__(self, method: str, overhead: int = 0):
        self.method, self.overhead = method, overhead
        self.name, self.mtime, self.length = None, 0, 0


def identify(head: bytes, first: bool) -> str | None:
    """The format that `head` (the input from a member's start on) is in, if fgzip reads it
    there: "lzw", "pack", and at the input's start only "zip" or "zlib"; None otherwise."""
    magic = bytes(head[:2])
    if magic == LZW_MAGIC:
        return "lzw"
    if magic == PACK_MAGIC:
        return "pack"
    if first and bytes(head[:4]) == ZIP_MAGIC:
        return "zip"
    if first and len(head) >= 2:
        from octoray.formats.zlib_stream import is_header

        if is_header(bytes(head[:2])):
            return "zlib"
    return None


def decode_member(kind: str, source, write, totals, on_header, passthrough: bool = False):
    """Decode the member of `kind` at the start of `source` (gunzip's buffered input) to
    `write`, counting it in `totals`.  Returns (last, outcome): `last` when nothing more is to
    be decoded, with what gzip would say after the data (None, a Notice, or a later member's
    HeaderFault); or None, the input untouched, where -cdf (`passthrough`) copies it instead.
    Raises a faults.Fault where gzip stops."""
    first = totals.members == 0
    try:
        if kind == "zlib":
            return _zlib(source, write, totals, on_header, passthrough)
        return _DECODERS[kind](source, write, totals, on_header if first else None)
    except faults.HeaderFault as fault:
        if first:
            raise
        return True, fault  # gzip keeps what it wrote before, as after a bad member header


def _pieces(source, record: _Record | None = None):
    """The rest of `source` in the pieces it holds (kept in `record` too, while it records)."""
    while source.fill(1):
        piece = source.take(len(source.buffer))
        if record is not None:
            record.add(piece)
        yield piece


class _Record:
    """The input read so far, while it may still be handed back: up to PASSTHROUGH_LIMIT
    bytes, and until `stop`."""

    def __init__(self):
        self.pieces: list | None = []
        self.size = 0

    def add(self, piece) -> None:
        if self.pieces is not None:
            self.pieces.append(piece)
            self.size += len(piece)
            if self.size > PASSTHROUGH_LIMIT:
                self.stop()

    def stop(self) -> None:
        self.pieces = None


def _begin(totals, header: ForeignHeader, on_header) -> None:
    if totals.first_header is None:
        totals.first_header = header
        if on_header is not None:
            on_header()


def _end(totals, header: ForeignHeader, size: int) -> None:
    totals.members += 1
    totals.bytes_out += size
    totals.last_size = size  # gzip counts these formats' output, not a trailer's 32 bits
    totals.last_crc, totals.last_method = None, header.method


def _lzw(source, write, totals, on_header):
    from octoray.formats import lzw

    header = ForeignHeader("compr")
    _begin(totals, header, on_header)
    source.take(len(LZW_MAGIC))
    counted = _Counted(write)
    lzw.decode(_pieces(source), counted, on_warning=totals.warnings.append)
    _end(totals, header, counted.size)
    return True, None


def _pack(source, write, totals, on_header):
    from octoray.formats import pack

    header = ForeignHeader("pack ")
    _begin(totals, header, on_header)
    source.take(len(PACK_MAGIC))
    decoded = pack.decode(_pieces(source), write)
    source.give_back(decoded.unused)
    _end(totals, header, decoded.size)
    return False, None  # gzip reads on: another member may follow


def _zip(source, write, totals, on_header):
    from octoray.formats import zip_entry

    local = zip_entry.parse_local_header(source.buffer)
    header = ForeignHeader("defla" if local.method == zip_entry.DEFLATED else "store")
    _begin(totals, header, on_header)
    decoded = zip_entry.decode(_pieces(source), write)
    source.give_back(decoded.unused)
    _end(totals, header, decoded.size)
    _as_gzip_read(source)
    return True, faults.MoreEntries() if decoded.more_entries else None


def _as_gzip_read(source) -> None:
    """Count the input gzip would have read past the entry: it reads whole GZIP_READ_SIZE
    pieces and leaves the rest of a zip unread (gzip -l and -v's compressed size)."""
    end = source.consumed
    upto = -(-end // GZIP_READ_SIZE) * GZIP_READ_SIZE
    source.fill(upto - end)
    source.buffer = source.buffer[:upto - end]


def _zlib(source, write, totals, on_header, passthrough):
    """pigz's reading.  Input that only looked like a zlib stream (text starting "x^" or
    "HK", say: one two-byte start in 31 passes the header's check) and fails before any
    output is what gzip calls it, not gzip: under -cdf it is handed back to be copied, as gzip
    copies it, and otherwise "not in gzip format", after which the run goes on."""
    from octoray.formats import zlib_stream

    header = ForeignHeader("defla", ZLIB_OVERHEAD)
    record = _Record() if passthrough else None

    def first_output() -> None:
        if record is not None:
            record.stop()  # output is out: too late to copy the input instead
        _begin(totals, header, on_header)

    counted = _Counted(write, on_first=first_output)
    try:
        decoded = zlib_stream.decode(_pieces(source, record), counted)
    except faults.Fault:
        if record is not None and record.pieces is not None:
            source.give_back(b"".join(record.pieces))
            return None
        if counted.on_first is not None:  # nothing came out: not a zlib stream after all
            raise faults.NotCompressed() from None
        raise
    counted.begin()
    source.give_back(decoded.unused)
    _end(totals, header, decoded.size)
    return False, None  # what follows is read as after a gzip member



class _Counted:
    """A writer that counts what passes through it, and calls `on_first` once before the
    first output (or `begin`)."""

    def __init__(self, write, on_first=None):
        self.write, self.size, self.on_first = write, 0, on_first

    def begin(self) -> None:
        if self.on_first is not None:
            self.on_first, on_first = None, self.on_first
            on_first()

    def __call__(self, data) -> None:
        self.begin()
        self.size += len(data)
        self.write(data)


_DECODERS = {"lzw": _lzw, "pack": _pack, "zip": _zip}
