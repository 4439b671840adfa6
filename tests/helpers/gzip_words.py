"""gzip's words for a fault, taken from fgzip's one wording table (octoray/cli/fgzip/report.py):
the format tests compare that table itself with what the real gzip prints."""

from __future__ import annotations

from octoray.cli.fgzip import report


def reason(fault, to_file: bool = False) -> str:
    """What gzip prints after 'gzip: FILE: ' for `fault` (a faults.Fault or Notice instance)."""
    return report.fault_text("stdin", fault, to_file).splitlines()[-1].split(": ", 2)[2]
