"""What can be wrong with compressed input, as types.

The format and job layers raise (or return) these; each command line words them its own
way, fgzip in gzip's words (``octoray/cli/fgzip/report.py``), so no control flow depends on
a message's text.
"""

from __future__ import annotations


class Fault(Exception):
    """Input that cannot be decompressed as it stands.  ``totals``: what the job read and
    wrote before it (gzip -l reports those figures)."""

    totals = None


class NotCompressed(Fault):
    """The data does not start as a compressed stream of a known format."""


class UnexpectedEnd(Fault):
    """The input ended inside a header, a compressed stream or a trailer."""


class CorruptData(Fault):
    """The compressed stream itself is malformed."""


class CrcMismatch(Fault):
    """The data decompressed, but its CRC-32 differs from the trailer's."""


class LengthMismatch(Fault):
    """The data decompressed, but its length differs from the trailer's."""


class CrcAndLengthMismatch(CrcMismatch, LengthMismatch):
    """Both the CRC-32 and the length differ from the trailer's."""


class HeaderFault(Fault):
    """A header gzip refuses.  In a member after the first, gzip reports it and stops but
    keeps what it wrote: the job returns such a fault instead of raising it."""


class UnknownMethod(HeaderFault):
    def __init__(self, method: int):
        super().__init__(method)
        self.method = method


class Encrypted(HeaderFault):
    """The encryption flag (0x20) is set."""


class ReservedFlags(HeaderFault):
    def __init__(self, flags: int):
        super().__init__(flags)
        self.flags = flags


class HeaderChecksum(HeaderFault):
    def __init__(self, stored: int, computed: int):
        super().__init__(stored, computed)
        self.stored, self.computed = stored, computed


class LzwTooManyBits(HeaderFault):
    """An LZW stream whose codes are wider than 16 bits (gzip reports it and goes on with the
    next file, as for a header it refuses)."""

    def __init__(self, bits: int):
        super().__init__(bits)
        self.bits = bits


class ZipNotValid(HeaderFault):
    """A zip local header cut short."""


class ZipMethod(HeaderFault):
    """A zip's first entry neither deflated nor stored."""


class ZipEncrypted(HeaderFault):
    """A zip's first entry is encrypted."""


class LzwCorrupt(CorruptData):
    """An LZW code past the table; `first`: the very first code (gzip words the two apart when
    it writes a file, suggesting zcat only where some data came out)."""

    def __init__(self, first: bool):
        super().__init__(first)
        self.first = first


class StoredLengthMismatch(CorruptData):
    """A stored zip entry whose two sizes differ (gzip prints both first)."""

    def __init__(self, size: int, compressed: int):
        super().__init__(size, compressed)
        self.size, self.compressed = size, compressed


class HuffmanLengthRange(CorruptData):
    """A pack stream's longest code length is 0 or over 25."""


class TooManyLeaves(CorruptData):
    """A pack stream's Huffman tree has more leaves than room."""


class TooFewLeaves(CorruptData):
    """A pack stream's Huffman tree is not full."""


class PackLengthMismatch(CorruptData):
    """A pack stream decoded to another length than its header's (gzip gives up the whole run
    on it, even under -t, unlike a gzip member's length error)."""


class MoreEntriesUnchanged(Fault):
    """A zip with more than one entry, decompressed to a file: gzip keeps the zip and ends the
    run."""


class Notice:
    """Something worth a warning after input that decompressed soundly."""


class TrailingGarbage(Notice):
    """Bytes after the last member that are not a member."""


class TrailingZeros(Notice):
    """Only zero bytes after the last member (tape padding); gzip mentions it under -v."""


class MoreEntries(Notice):
    """A zip with more entries after the one decoded (gzip warns where it writes stdout or
    nowhere; decompressing to a file turns it into MoreEntriesUnchanged)."""


class UnknownLzwFlags(Notice):
    """Reserved bits set in an LZW stream's flags byte: gzip warns before the data and goes on."""

    def __init__(self, flags: int):
        self.flags = flags
