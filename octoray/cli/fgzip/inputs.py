"""Opening an input as gzip does: not following a link without -f or -c, not waiting on a
FIFO, and refusing what gzip refuses (special files, set-id, sticky, hard-linked files)."""

from __future__ import annotations

import os
import stat

from octoray.cli.fgzip.report import PROGRAM, Run

DIRECTORY = "directory"


def open_input(path: str, run: Run, walk) -> tuple[int, os.stat_result] | None:
    """The open descriptor and its status, or None after gzip's message; a directory under
    -r is handed to `walk`."""
    options = run.options
    follow = options.force or options.stdout or options.list  # gzip -l and -t write to stdout, as -c does
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
        st = os.fstat(fd)
    except OSError as failure:  # gzip's perror(name): an empty name leaves no "name: "
        run.error(f"{PROGRAM}: {path + ': ' if path else ''}{failure.strerror}")
        return None
    refusal = refusal_reason(path, st, options)
    if refusal is not None:
        os.close(fd)
        if refusal == DIRECTORY and options.recursive:
            walk(path)
        elif refusal == DIRECTORY:
            run.warning(f"{PROGRAM}: {path} is a directory -- ignored")
        else:
            run.warning(f"{PROGRAM}: {refusal}")
        return None
    os.set_blocking(fd, True)
    return fd, st


def refusal_reason(path: str, st: os.stat_result, options) -> str | None:
    """gzip's reason for leaving a file alone (DIRECTORY for a directory), or None."""
    if stat.S_ISDIR(st.st_mode):
        return DIRECTORY
    if options.stdout or options.test or options.list:
        return None
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a directory or a regular file - ignored"
    if st.st_mode & stat.S_ISUID:
        return f"{path} is set-user-ID on execution - ignored"
    if st.st_mode & stat.S_ISGID:
        return f"{path} is set-group-ID on execution - ignored"
    if options.force:
        return None
    if st.st_mode & stat.S_ISVTX:
        return f"{path} has the sticky bit set - file ignored"
    if st.st_nlink > 1:
        others = st.st_nlink - 1
        return f"{path} has {others} other link{'s' if others > 1 else ''} -- file ignored"
    return None


def stdin_mtime(fd: int) -> int:
    """The time gzip lists for standard input: the file's, or 0 for a pipe."""
    return file_time(os.fstat(fd)) or 0


def file_time(st: os.stat_result) -> int | None:
    """An input's modification time in whole seconds (rounded down, as gzip's time_t is), or
    None for a pipe or a device, whose time gzip never stores."""
    return st.st_mtime_ns // 1_000_000_000 if stat.S_ISREG(st.st_mode) else None
