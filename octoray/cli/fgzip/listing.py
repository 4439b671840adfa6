"""gzip -l: the listing's rows and totals, and the ratio arithmetic gzip -l and -v share
(gzip's header_bytes, carried from one file to the next)."""

from __future__ import annotations

import os
import sys

from octoray.cli.fgzip.names import header_basename
from octoray.cli.fgzip.output import discard
from octoray.cli.fgzip.report import Run, display_ratio, extra_note
from octoray.formats import faults


def header_bytes(totals) -> int | None:
    """gzip's header_bytes after reading a file: the first header and trailer when the file was
    one member and nothing more, 0 once it looked past the first member; None: no header."""
    if totals is None or totals.first_header is None:
        return None
    overhead = getattr(totals.first_header, "overhead", None)  # another format's (jobs.foreign)
    return 0 if totals.more else totals.first_header.length + 8 if overhead is None else overhead


def decompression_ratio(totals) -> str:
    """gzip counts the last member's output only (it restarts the count at each member, after
    reading the magic: data copied by -cdf after a member counts one byte short)."""
    out = totals.last_size
    if totals.copied:
        out = totals.copied_bytes - (1 if totals.members and totals.copied_bytes else 0)
    return display_ratio(out - (totals.bytes_in - (header_bytes(totals) or 0)), out)


class Lister:
    """gzip -l's running state: the heading once, totals, and header_bytes carried over."""

    def __init__(self):
        self.heading_done = False
        self.total_in = self.total_out = 0
        self.header_bytes = 0

    def row(self, run: Run, totals, mtime: int, name: str) -> None:
        if not self.heading_done:
            self.heading_done = True
            if run.options.verbose:
                _print("method  crc     date  time  ", end="")
            if not run.options.quiet:
                _print(f"{'compressed':>19} {'uncompressed':>19}  ratio uncompressed_name")
        line = ""
        if run.options.verbose:
            crc = totals.last_crc
            # gzip prints its "unknown" CRC, (unsigned long) ~0, for a zip, LZW or pack stream last
            method, crc = ("defla", f"{crc:08x}") if crc is not None else (totals.last_method, f"{(1 << 64) - 1:x}")
            line = f"{method} {crc} {list_date(mtime)} "
        bytes_in, bytes_out = totals.bytes_in, totals.last_size
        self.total_in += bytes_in
        self.total_out += bytes_out
        ratio = display_ratio(bytes_out - (bytes_in - self.header_bytes), bytes_out)
        _print(f"{line}{bytes_in:19d} {bytes_out:19d} {ratio} {name}")

    def totals(self, run: Run) -> None:
        if self.total_in <= 0 or self.total_out <= 0:
            return
        line = " " * 28 if run.options.verbose else ""
        if run.options.verbose or not run.options.quiet:
            line += f"{self.total_in:19d} {self.total_out:19d} "
        ratio = display_ratio(self.total_out - (self.total_in - self.header_bytes), self.total_out)
        _print(f"{line}{ratio} (totals)")


def _print(text: str, end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


def list_date(mtime: int) -> str:
    import time

    try:
        t = time.localtime(mtime)
    except (OverflowError, OSError, ValueError):
        return "??? ?? ??:??"
    month = "JanFebMarAprMayJunJulAugSepOctNovDec"[3 * (t.tm_mon - 1):3 * t.tm_mon]
    return f"{month}{t.tm_mday:3d} {t.tm_hour:02d}:{t.tm_min:02d}"


def list_stream(fd: int, name: str, mtime: int, run: Run, label: str = "stdin") -> None:
    """gzip 1.12 decompresses the whole file for -l; a row only when it is sound to the end."""
    from octoray.jobs.gunzip import decompress_stream

    lister = run.lister
    try:
        totals, outcome = decompress_stream(fd, discard, forced=run.options.force,  # -l writes to stdout, for gzip
                                            on_extra=extra_note(run, label))
    except faults.Fault as failure:
        # gzip zeroes header_bytes before it reads a file's magic: a file that is not gzip
        # leaves 0 behind, which the next totals row shows (-183.3 % for a.gz then junk)
        lister.header_bytes = header_bytes(failure.totals) or 0
        run.fault(label, failure)
        if failure.totals is not None and failure.totals.first_header is not None:
            lister.totals(run)
        return
    _update_header_bytes(lister, totals)
    if not run.outcome(label, outcome, totals):
        return
    if isinstance(outcome, (faults.TrailingGarbage, faults.TrailingZeros)):  # gzip lists no row, only the totals
        lister.totals(run)
        return
    header = totals.first_header
    if run.options.restore():
        if header.mtime:
            mtime = header.mtime
        if header.name and name != "stdout":
            name = os.path.join(os.path.dirname(name), header_basename(header.name))
    lister.row(run, totals, mtime, name)


def _update_header_bytes(lister: Lister, totals) -> None:
    found = header_bytes(totals)
    if found is not None:
        lister.header_bytes = found


