"""The standard streams as the tools need them: a stand-in for each one the caller closed,
and file names that are not UTF-8 written as their bytes.

A caller may close a stream (`fgzip -k f >&-`, a daemon's stdin).  Each closed descriptor
gets a stand-in before the tool opens any file, so that no output file
becomes descriptor 1 and takes what was meant for stdout, and the tool meets the closed
stream only where it uses it, as gzip does: reading stdin or writing stdout fails with "Bad
file descriptor" (the stand-in is /dev/null opened the other way round), and messages to a
closed stderr are lost without changing the exit status.  Standard library only: the
launchers call it first.
"""

from __future__ import annotations

import os
import sys

# descriptor -> (sys attribute, how /dev/null is opened in its place, how Python reads it)
STAND_INS = {0: ("stdin", os.O_WRONLY, "r"), 1: ("stdout", os.O_RDONLY, "w"), 2: ("stderr", os.O_WRONLY, "w")}


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def stand_in_for_closed_streams() -> None:
    """Fill descriptors 0-2 where they are closed, lowest first, and give Python a stream on
    each (it sets sys.stdin/stdout/stderr to None for a descriptor closed at start-up)."""
    for fd, (name, flags, mode) in STAND_INS.items():
        if is_open(fd):
            continue
        opened = os.open(os.devnull, flags)  # the lowest free descriptor: `fd` itself
        if opened != fd:
            os.dup2(opened, fd)
            os.close(opened)
        if getattr(sys, name) is None:
            stream = open(fd, mode, closefd=False, errors="backslashreplace" if fd == 2 else "strict")
            setattr(sys, name, stream)
            setattr(sys, f"__{name}__", stream)


def readable(fd: int) -> bool:
    """Whether `fd` was opened for reading (not a closed stdin's stand-in)."""
    import fcntl

    try:
        return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_WRONLY
    except OSError:
        return False


def names_as_their_bytes() -> None:
    """Make stdout and stderr write a file name that is not UTF-8 (os.fsdecode's surrogate
    escapes) as its bytes, as gzip and ls write it, not as "\\udce9"."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="surrogateescape")
        except (AttributeError, ValueError):
            pass
