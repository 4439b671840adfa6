"""fgzip's messages and exit status: gzip's wording for every fault, in one table, and the
run's state (0 ok, 1 error, 2 warning) that errors and warnings move."""

from __future__ import annotations

import sys

from octoray.formats import faults

PROGRAM = "fgzip"
OK, ERROR, WARNING = 0, 1, 2

# gzip's words for each fault; a header fault is printed on one line, a fault in the data
# after an empty line ("\n" first), as gzip does
DATA_FAULTS = {
    faults.NotCompressed: "not in gzip format",
    faults.UnexpectedEnd: "unexpected end of file",
    faults.CorruptData: "invalid compressed data--format violated",
    faults.CrcMismatch: "invalid compressed data--crc error",
    faults.LengthMismatch: "invalid compressed data--length error",
}

NOTICES = {
    faults.TrailingGarbage: "decompression OK, trailing garbage ignored",
    faults.TrailingZeros: "decompression OK, trailing zero bytes ignored",
}


def fault_text(label: str, fault: faults.Fault) -> str:
    """gzip's message for `fault` in the input named `label`."""
    if isinstance(fault, faults.Encrypted):
        return f"{PROGRAM}: {label} is encrypted -- not supported"
    if isinstance(fault, faults.ReservedFlags):
        return f"{PROGRAM}: {label} has flags 0x{fault.flags:x} -- not supported"
    if isinstance(fault, faults.UnknownMethod):
        return f"{PROGRAM}: {label}: unknown method {fault.method} -- not supported"
    if isinstance(fault, faults.HeaderChecksum):
        return (f"{PROGRAM}: {label}: header checksum 0x{fault.stored:04x} != computed checksum "
                f"0x{fault.computed:04x}")
    if isinstance(fault, faults.CrcAndLengthMismatch):  # gzip reports both, one after the other
        return fault_text(label, faults.CrcMismatch()) + "\n" + fault_text(label, faults.LengthMismatch())
    return f"\n{PROGRAM}: {label}: {DATA_FAULTS[type(fault)]}"


class Fatal(Exception):
    """Ends the whole run with a message and status 1."""


class Abort(Exception):
    """gzip gives up the whole run on a cut-off or malformed deflate stream (status 1)."""


def message(text: str, end: str = "\n") -> None:
    try:
        sys.stderr.write(text + end)
        sys.stderr.flush()
    except OSError:
        pass


def usage_error(failure: Exception) -> int:
    message(f"{PROGRAM}: {failure}\nTry `{PROGRAM} --help' for more information.")
    return ERROR


class Run:
    """One invocation: the options (fixed once parsed), the exit status so far, and what the
    run opened along the way (the executor, gzip -l's running totals)."""

    def __init__(self, options):
        self.options = options
        self.status = OK
        self.executor = None
        self.lister = None

    def error(self, text: str) -> None:
        message(text)
        self.status = ERROR

    def warning(self, text: str, quiet_hides: bool = True) -> None:
        """gzip's WARN: printed unless -q, but the status is 2 either way."""
        if not (self.options.quiet and quiet_hides):
            message(text)
        if self.status == OK:
            self.status = WARNING

    def fault(self, label: str, failure: faults.Fault) -> None:
        """Report a fault that ends this file; raise Abort where gzip gives up the whole run:
        a cut-off or malformed stream, or a bad check value outside -t and -l."""
        self.error(fault_text(label, failure))
        checking = self.options.test or self.options.list
        if isinstance(failure, (faults.UnexpectedEnd, faults.CorruptData)) or (
                isinstance(failure, (faults.CrcMismatch, faults.LengthMismatch)) and not checking):
            raise Abort

    def outcome(self, label: str, outcome) -> bool:
        """Report what followed sound data: a later member's header fault (an error; False:
        gzip stops the file there, keeping what it wrote) or trailing data (a warning; gzip
        mentions trailing zeros only under -v)."""
        if isinstance(outcome, faults.HeaderFault):
            self.error(fault_text(label, outcome))
            return False
        if outcome is not None and (not isinstance(outcome, faults.TrailingZeros) or self.options.verbose):
            self.warning(f"\n{PROGRAM}: {label}: {NOTICES[type(outcome)]}")
        return True


def display_ratio(num: int, den: int) -> str:
    """gzip's "%5.1f%%" of num/den, 0 when den is 0."""
    return f"{100.0 * num / den if den else 0.0:5.1f}%"
