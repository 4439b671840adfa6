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


class Notice:
    """Something worth a warning after input that decompressed soundly."""


class TrailingGarbage(Notice):
    """Bytes after the last member that are not a member."""


class TrailingZeros(Notice):
    """Only zero bytes after the last member (tape padding); gzip mentions it under -v."""
