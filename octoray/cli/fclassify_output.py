"""fclassify's output: result lines in the chosen format, with file names escaped so that every
line reads back unambiguously, and the progress line on a terminal.

Names in TSV (the default): a backslash, tab, newline or carriage return in a name is written
``\\\\``, ``\\t``, ``\\n``, ``\\r`` (as linear TSV does); with ``--zero`` records end with NUL
instead and names are written as they are (as ``sha256sum -z`` does).  Bytes that are not
UTF-8 are written as they are, as ``ls`` and ``find`` write them.  CSV quotes as RFC 4180 says.
JSON Lines is always valid UTF-8 JSON: a name that is not UTF-8 has its undecodable bytes as
U+FFFD in ``path``, and its exact bytes, base64-encoded, in ``path_base64``.
"""

from __future__ import annotations

import os
import sys
import time

PROGRAM = "fclassify"
_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_SHOWN_ESCAPES = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r",
                                **{c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f) if c not in (9, 10, 13)}})
# other control characters too (ESC would let a file's name recolour or move a terminal's text)


def tsv_field(name: str) -> str:
    """The name as one TSV field: backslash escapes for \\\\, tab, newline and return."""
    if "\\" in name or not name.isprintable():  # isprintable: no tab, newline, return...
        return name.translate(_TSV_ESCAPES)
    return name


def per_second(count: int, seconds: float) -> str:
    """A rate for people: whole numbers from 10 a second, two digits below (0.45, not 0)."""
    rate = count / max(seconds, 1e-9)
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"


def csv_field(name: str) -> str:
    """A name as one RFC 4180 field: quoted (its quotes doubled) when it holds a comma, a
    quote, a line feed or a carriage return (Python's csv module leaves a lone CR unquoted
    when records end with LF, and readers then split the record)."""
    if any(c in name for c in ',"\n\r'):
        return '"' + name.replace('"', '""') + '"'
    return name


def shown(name: str) -> str:
    """The name for a message on stderr: on one line, whatever it holds."""
    return name if name.isprintable() else name.translate(_SHOWN_ESCAPES)


def json_path(name: str) -> dict:
    """{"path": ...} for JSON, plus "path_base64" (the exact bytes) for a name not in UTF-8."""
    try:
        name.encode("utf-8")
        return {"path": name}
    except UnicodeEncodeError:  # surrogate escapes: bytes that are not UTF-8
        import base64

        raw = os.fsencode(name)
        return {"path": raw.decode("utf-8", "replace"), "path_base64": base64.b64encode(raw).decode("ascii")}


class Printer:
    """Writes one result per record in the chosen format; failures go to stderr instead."""

    def __init__(self, out, class_names: list[str], output: str, top_k: int, labels_only: bool, zero: bool = False):
        self.out, self.names, self.format = out, class_names, output
        self.top_k, self.labels_only = top_k, labels_only
        self.end = "\0" if zero else "\n"
        self.field = (lambda name: name) if zero else tsv_field
        if output == "csv" and not labels_only:
            ranks = [f"{kind}{i}" for i in range(1, top_k + 1) for kind in ("label", "score")]
            self.out.write(",".join(["path"] + ranks if top_k else ["path", "label"]) + self.end)

    def ranked(self, scores) -> list[tuple[str, int]]:
        """The classes by falling score; among equal scores the lower index first (as argmax)."""
        order = sorted(range(len(scores)), key=lambda c: (-int(scores[c]), c))
        return [(self.names[c], int(scores[c])) for c in order[: max(1, self.top_k)]]

    def write(self, name: str, scores, best: int) -> None:
        if self.labels_only:
            self.out.write(self.names[best] + self.end)
            return
        if not self.top_k and self.format == "tsv":  # the default, kept quick
            self.out.write(f"{self.field(name)}\t{self.names[best]}{self.end}")
            return
        ranked = self.ranked(scores)
        if self.format == "jsonl":
            import json

            record = json_path(name)
            record["label"] = ranked[0][0]
            if self.top_k:
                record["top"] = [{"label": label, "score": score} for label, score in ranked]
            self.out.write(json.dumps(record, ensure_ascii=False) + self.end)
        elif self.format == "csv":
            rest = [str(v) for pair in ranked for v in pair] if self.top_k else [ranked[0][0]]
            self.out.write(",".join([csv_field(name)] + rest) + self.end)
        else:
            fields = [self.field(name)] + ([f"{label}\t{score}" for label, score in ranked] if self.top_k
                                           else [ranked[0][0]])
            self.out.write("\t".join(fields) + self.end)


class _Held:
    """Result text kept back until the progress line is out of the way."""

    def __init__(self):
        self.parts: list[str] = []
        self.write = self.parts.append


class Screen:
    """stdout and stderr as the user sees them, with a progress line on stderr when it is a
    terminal (and not -q).  The line is cleared before anything else reaches that terminal:
    messages, and results when stdout is the same terminal, which are then held and written a
    batch at a time with the line redrawn below them.  The first reading comes after half a
    second, a rate only once there is a second of results to measure it by."""

    FIRST = 0.5  # seconds before the line first appears
    MEASURE = 1.0  # seconds of results before a rate is shown
    REDRAW = 0.1  # seconds between redraws

    def __init__(self, progress: bool, stdout=None, stderr=None):
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.progress = progress and _isatty(self.stderr)
        held = self.progress and _same_terminal(self.stdout, self.stderr)
        self._held = _Held() if held else None
        self.out = self._held if held else self.stdout  # where the Printer writes
        self.count = 0
        self.started = time.monotonic()
        self._first = None  # (time, count) at the end of the first batch
        self._drawn = 0.0
        self._line = False  # a progress line is on the screen

    def message(self, text: str) -> None:
        self._release()
        self._clear()
        self.stderr.write(f"{PROGRAM}: {text}\n")
        self.stderr.flush()

    def step(self, batch_end: bool) -> None:
        """One result written (or reported); `batch_end`: no other is ready behind it."""
        self.count += 1
        if not batch_end or not self.progress:
            return
        now = time.monotonic()
        if self._first is None:
            self._first = (now, self.count)
        if self._held is not None:
            self._release()
        if now - self.started >= self.FIRST and (now - self._drawn >= self.REDRAW or not self._line):
            self._draw(now)

    def close(self) -> None:
        """Everything held written, the progress line gone."""
        self._release()
        self._clear()
        try:
            self.stdout.flush()
        finally:
            self.stderr.flush()

    def _release(self) -> None:
        if self._held is not None and self._held.parts:
            self._clear()
            text = "".join(self._held.parts)
            self._held.parts.clear()
            self.stdout.write(text)
            self.stdout.flush()

    def _draw(self, now: float) -> None:
        text = f"{PROGRAM}: {self.count:,} image{'' if self.count == 1 else 's'}"
        since, done = self._first
        if now - since >= self.MEASURE:
            text += f", {per_second(self.count - done, now - since)}/s"
        try:
            width = os.get_terminal_size(self.stderr.fileno()).columns or 80
        except (OSError, ValueError):
            width = 80
        self.stderr.write("\r" + text[: max(1, width - 1)] + "\033[K")
        self.stderr.flush()
        self._drawn, self._line = now, True

    def _clear(self) -> None:
        if self._line:
            self.stderr.write("\r\033[K")
            self.stderr.flush()
            self._line = False


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _same_terminal(a, b) -> bool:
    try:
        return a.isatty() and os.fstat(a.fileno()).st_rdev == os.fstat(b.fileno()).st_rdev
    except (AttributeError, OSError, ValueError):
        return False
