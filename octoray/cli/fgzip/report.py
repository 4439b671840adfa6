"""fgzip's messages and exit status: gzip's wording for every fault, in one table, and the
run's state (0 ok, 1 error, 2 warning) that errors and warnings move."""

from __future__ import annotations

import sys

from octoray.formats import faults

PROGRAM = "fgzip"
OK, ERROR, WARNING = 0, 1, 2

# gzip's words for each fault and notice, as templates over the program's name (p), the
# input's label and the fault's fields (f).  Messages about the data start with an empty
# line, as gzip's do; header refusals and zip's entry counts do not.
WORDING = {
    faults.NotCompressed: "\n{p}: {label}: not in gzip format",
    faults.UnexpectedEnd: "\n{p}: {label}: unexpected end of file",
    faults.CorruptData: "\n{p}: {label}: invalid compressed data--format violated",
    faults.CrcMismatch: "\n{p}: {label}: invalid compressed data--crc error",
    faults.LengthMismatch: "\n{p}: {label}: invalid compressed data--length error",
    faults.CrcAndLengthMismatch: ("\n{p}: {label}: invalid compressed data--crc error\n"
                                  "\n{p}: {label}: invalid compressed data--length error"),
    faults.Encrypted: "{p}: {label} is encrypted -- not supported",
    faults.ReservedFlags: "{p}: {label} has flags 0x{f.flags:x} -- not supported",
    faults.UnknownMethod: "{p}: {label}: unknown method {f.method} -- not supported",
    faults.HeaderChecksum: "{p}: {label}: header checksum 0x{f.stored:04x} != computed checksum 0x{f.computed:04x}",
    # compress's LZW (.Z)
    faults.LzwTooManyBits: "\n{p}: {label}: compressed with {f.bits} bits, can only handle 16 bits",
    faults.LzwCorrupt: "\n{p}: {label}: corrupt input.",
    (faults.LzwCorrupt, "to a file"): "\n{p}: {label}: corrupt input. Use zcat to recover some data.",
    faults.UnknownLzwFlags: "\n{p}: {label}: warning, unknown flags 0x{f.flags:x}",
    # pack (.z, 1f 1e)
    faults.HuffmanLengthRange: "\n{p}: {label}: invalid compressed data -- Huffman code bit length out of range",
    faults.TooManyLeaves: "\n{p}: {label}: too many leaves in Huffman tree",
    faults.TooFewLeaves: "\n{p}: {label}: too few leaves in Huffman tree",
    faults.PackLengthMismatch: "\n{p}: {label}: invalid compressed data--length error",
    # a zip's first entry
    faults.ZipNotValid: "\n{p}: {label}: not a valid zip file",
    faults.ZipMethod: "\n{p}: {label}: first entry not deflated or stored -- use unzip",
    faults.ZipEncrypted: "\n{p}: {label}: encrypted file -- use unzip",
    faults.StoredLengthMismatch: "len {f.size}, siz {f.compressed}\n\n{p}: {label}: invalid compressed data--length mismatch",
    faults.MoreEntriesUnchanged: "{p}: {label} has more than one entry -- unchanged",
    faults.MoreEntries: "{p}: {label} has more than one entry--rest ignored",
    # after the last member
    faults.TrailingGarbage: "\n{p}: {label}: decompression OK, trailing garbage ignored",
    faults.TrailingZeros: "\n{p}: {label}: decompression OK, trailing zero bytes ignored",
}

ENDS_RUN = (faults.UnexpectedEnd, faults.CorruptData, faults.MoreEntriesUnchanged)
"""Faults on which gzip gives up the whole run (abort_gzip), -t and -l included."""
# What gzip's get_method refuses in the first header: read from stdin, gzip exits at once
# (later operands are not read), where for a file it goes on with the next one.
STDIN_ENDS_RUN = (faults.NotCompressed, faults.UnknownMethod, faults.Encrypted, faults.ReservedFlags,
                  faults.HeaderChecksum, faults.ZipNotValid, faults.ZipMethod, faults.ZipEncrypted)


def fault_text(label: str, fault, to_file: bool = False) -> str:
    """gzip's message for `fault` (or a notice) in the input named `label`; `to_file`: the
    output is a file (gzip words some LZW damage differently then)."""
    key = type(fault)
    if to_file and isinstance(fault, faults.LzwCorrupt) and not fault.first:
        key = (faults.LzwCorrupt, "to a file")
    return WORDING[key].format(p=PROGRAM, label=label, f=fault)


class Fatal(Exception):
    """Ends the whole run with a message and status 1."""


class Abort(Exception):
    """gzip gives up the whole run on a cut-off or malformed deflate stream (status 1)."""


_line_open = False  # the last message left its line open: -v's "NAME:\t" waiting for its ratio


def message(text: str, end: str = "\n") -> None:
    global _line_open
    line = text + end
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except OSError:
        pass
    if line:
        _line_open = not line.endswith("\n")


def on_a_new_line(text: str) -> str:
    """`text` for a message that may come while -v's "NAME:\t" waits, as gzip starts a new line."""
    return "\n" + text if _line_open else text


def extra_note(run: "Run", label: str):
    """-v's note for a member's extra field that fgzip does not read, as gzip words it."""
    if not run.options.verbose:
        return None
    return lambda length: message(f"{PROGRAM}: {label}: extra field of {length} bytes ignored")


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
        a cut-off or malformed stream, a bad check value outside -t and -l, or a first header
        it refuses on stdin."""
        self.early_notices(label, failure.totals)
        options = self.options
        checking = options.test or options.list
        self.error(fault_text(label, failure, to_file=not (checking or options.stdout or label == "stdin")))
        if isinstance(failure, ENDS_RUN) or (
                isinstance(failure, (faults.CrcMismatch, faults.LengthMismatch)) and not checking) or (
                label == "stdin" and isinstance(failure, STDIN_ENDS_RUN)):
            raise Abort

    def early_notices(self, label: str, totals) -> None:
        """Warnings gzip prints before the data (reserved LZW flags), held by the job's totals."""
        for notice in getattr(totals, "warnings", None) or ():
            self.warning(fault_text(label, notice))

    def outcome(self, label: str, outcome, totals=None) -> bool:
        """Report what followed sound data: a later member's header fault (an error; False:
        gzip stops the file there, keeping what it wrote) or trailing data (a warning; gzip
        mentions trailing zeros only under -v); the warnings before the data first."""
        self.early_notices(label, totals)
        if isinstance(outcome, faults.HeaderFault):
            self.error(fault_text(label, outcome))
            return False
        if outcome is not None and (not isinstance(outcome, faults.TrailingZeros) or self.options.verbose):
            self.warning(fault_text(label, outcome))
        return True


def display_ratio(num: int, den: int) -> str:
    """gzip's "%5.1f%%" of num/den, 0 when den is 0."""
    return f"{100.0 * num / den if den else 0.0:5.1f}%"
