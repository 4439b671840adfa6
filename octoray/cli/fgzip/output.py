"""Where fgzip's output goes: stdout through a background writer, or a temporary file beside
the output that is renamed into place once complete (and removed if a signal ends the run),
the input removed only after that."""

from __future__ import annotations

import errno
import os
import stat
import sys

try:  # the C module: `signal` wraps it in enums that cost milliseconds of start-up
    import _signal as signal
except ImportError:  # pragma: no cover - other Pythons
    import signal

from octoray.cli.fgzip.names import temporary_name
from octoray.cli.fgzip.report import PROGRAM, Fatal, Run, message

_partial_output: str | None = None


def _remove_partial_and_die(signum, _frame) -> None:
    if _partial_output:
        try:
            os.unlink(_partial_output)
        except OSError:
            pass
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_signal_handlers() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `fgzip -dc big | head` ends silently
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGXCPU):
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, _remove_partial_and_die)


def stdout_writer():
    from octoray.streams import BackgroundWriter, enlarge_pipe

    fd = sys.stdout.fileno()
    enlarge_pipe(fd)
    return BackgroundWriter(fd)


def discard(_data) -> None:
    """Where gzip -t and -l send the data."""


def close_quietly(writer) -> None:
    if writer is not None:
        try:
            writer.close()
        except OSError:
            pass


def seekable_position(fd: int) -> int | None:
    """Where the next write to `fd` lands, if the output can be written into afterwards (a
    regular file not opened for appending); None otherwise (a pipe, a terminal, >>)."""
    import fcntl

    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
            return None
        return os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return None


def write_index(fd: int, start: int | None, result) -> None:
    """Write a compression's chunk index (octoray.jobs.gzip.Totals.chunk_index) into the member
    that begins at `start` in the output `fd`, once everything before it is written."""
    index = getattr(result, "chunk_index", None)
    if start is not None and index is not None:
        offset, data = index
        os.pwrite(fd, data, start + offset)


def to_stdout(work):
    """Run `work(write, seekable)` with its output going to stdout."""
    writer = stdout_writer()
    try:
        start = seekable_position(writer.fd)
        result = work(writer.write, start is not None)
        writer.close()
        write_index(writer.fd, start, result)
        return result
    except OSError as failure:
        close_quietly(writer)
        if failure.filename is None:
            raise Fatal(f"\n{PROGRAM}: stdout: {os.strerror(failure.errno)}") from None
        raise
    except BaseException:
        close_quietly(writer)
        raise


def may_overwrite(run: Run, out_path: str) -> bool:
    """gzip's rule for an existing output: -f, else ask on a terminal, else warn (status 2)."""
    if not os.path.lexists(out_path) or run.options.force:
        return True
    message(f"{PROGRAM}: {out_path} already exists;", end="")
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN and os.isatty(0):
        message(" do you wish to overwrite (y or n)? ", end="")
        try:
            answer = os.read(0, 1024)
        except OSError:
            answer = b""
        if answer[:1] in (b"y", b"Y"):
            return True
    run.warning("\tnot overwritten", quiet_hides=False)
    return False


def _writer(fd_out: int, out_path: str):
    """Whole writes to the output; a failure (a full disk) names the output, as gzip's does."""
    from octoray.streams import write_all

    def write(data) -> None:
        try:
            write_all(fd_out, data)
        except OSError as failure:
            raise OSError(failure.errno, failure.strerror, out_path) from None

    return write


def to_file(run: Run, in_path: str, out_path: str, st: os.stat_result, work,
             mtime_ns=None, before=None):
    """Write the output of `work(write, seekable)` to a temporary file beside `out_path`, then
    rename it into place and remove the input; nothing is overwritten or removed before the
    output is complete.  `mtime_ns`: the output's time (None: the input's), or a function of
    the work's result giving it."""
    global _partial_output
    from octoray.formats.gzip import ZipTooLarge

    if not may_overwrite(run, out_path):
        return None
    if os.path.isdir(out_path) and not os.path.islink(out_path):  # -f onto a directory ("..")
        run.error(f"{PROGRAM}: {out_path}: {os.strerror(errno.EISDIR)}")
        return None
    directory = os.path.dirname(out_path) or "."
    temporary = os.path.join(directory, temporary_name(os.path.basename(out_path)))
    _partial_output = temporary  # before it exists: a signal between the two still removes it
    try:
        fd_out = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as failure:
        _partial_output = None
        run.error(f"{PROGRAM}: {out_path}: {failure.strerror}")
        return None
    if before is not None:
        before()
    try:
        try:
            result = work(_writer(fd_out, out_path), True)
            write_index(fd_out, 0, result)
            if run.options.synchronous:
                os.fsync(fd_out)
            os.fchmod(fd_out, stat.S_IMODE(st.st_mode) & 0o777)
            try:
                os.fchown(fd_out, st.st_uid, st.st_gid)
            except OSError:
                pass
        finally:
            os.close(fd_out)
        mtime = mtime_ns(result) if callable(mtime_ns) else mtime_ns  # -dN: known once the data is read
        os.utime(temporary, ns=(st.st_atime_ns, st.st_mtime_ns if mtime is None else mtime))
        os.replace(temporary, out_path)
        _partial_output = None
    except BaseException as failure:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        _partial_output = None
        if isinstance(failure, OSError):  # gzip's write_error and read_error: the run ends there
            raise Fatal(f"\n{PROGRAM}: {failure.filename or in_path}: {failure.strerror}") from None
        if isinstance(failure, ZipTooLarge):
            run.error(f"{PROGRAM}: {in_path}: {failure}")
            return None
        raise
    if not run.options.keep:
        try:
            os.unlink(in_path)
        except OSError as failure:
            run.error(f"{PROGRAM}: {in_path}: {failure.strerror}")
    return result


