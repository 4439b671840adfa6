"""fgzip: gzip's command line over octoray's parallel engine.

This layer parses options, handles files (names, suffixes, modes, times, temporary outputs),
prints gzip's messages and chooses the exit status: 0 ok, 1 error, 2 warning.  The work on
the data is done by octoray.jobs.gzip, which never sees an option.
"""

from __future__ import annotations

import os
import stat
import sys

try:  # the C module: `signal` wraps it in enums that cost milliseconds of start-up
    import _signal as signal
except ImportError:  # pragma: no cover - other Pythons
    import signal

from octoray import __version__
from octoray.cli.getopt import Option, UsageError, parse

PROGRAM = "fgzip"
OK, ERROR, WARNING = 0, 1, 2
KNOWN_SUFFIXES = (".gz", ".z", "-gz", "-z", "_z", ".tgz", ".taz")

# In gzip's own table order (its ambiguity messages list candidates in this order), then pigz's.
OPTIONS = [
    Option("ascii", "a", ("ascii",)),
    Option("stdout", "c", ("to-stdout", "stdout")),
    Option("decompress", "d", ("decompress", "uncompress")),
    Option("force", "f", ("force",)),
    Option("help", "h", ("help",)),
    Option("keep", "k", ("keep",)),
    Option("list", "l", ("list",)),
    Option("license", "L", ("license",)),
    Option("no-name", "n", ("no-name",)),
    Option("name", "N", ("name",)),
    Option("quiet", "q", ("quiet", "silent")),
    Option("synchronous", "Y", ("synchronous",)),
    Option("recursive", "r", ("recursive",)),
    Option("suffix", "S", ("suffix",), True),
    Option("test", "t", ("test",)),
    Option("verbose", "v", ("verbose",)),
    Option("version", "V", ("version",)),
    Option("fast", "", ("fast",)),
    Option("best", "", ("best",)),
    Option("lzw", "Z", ("lzw",)),
    Option("bits", "", ("bits",), True),
    Option("rsyncable", "R", ("rsyncable",)),
    Option("processes", "p", ("processes",), True),
    Option("blocksize", "b", ("blocksize",), True),
    Option("independent", "i", ("independent",)),
    Option("no-time", "m", ("no-time",)),
    Option("time", "M", ("time",)),
    Option("scheduler", "", ("scheduler",), True),
    Option("scheduler-file", "", ("scheduler-file",), True),
    Option("cluster", "", ("cluster",), True),
    *(Option(f"level{d}", str(d)) for d in range(1, 10)),
]
NOT_YET = {"list": "--list", "recursive": "--recursive", "rsyncable": "--rsyncable"}

HELP = f"""Usage: {PROGRAM} [OPTION]... [FILE]...
Compress or uncompress FILEs (by default, compress FILES in-place), in parallel
chunks on the octoray engine.  Output is standard gzip.

Mandatory arguments to long options are mandatory for short options too.

  -c, --stdout      write on standard output, keep original files unchanged
  -d, --decompress  decompress
  -f, --force       force overwrite of output file and compress links
  -h, --help        give this help
  -k, --keep        keep (don't delete) input files
  -n, --no-name     do not save or restore the original name and timestamp
  -N, --name        save or restore the original name and timestamp
  -q, --quiet       suppress all warnings
  -S, --suffix=SUF  use suffix SUF on compressed files
  -t, --test        test compressed file integrity
  -v, --verbose     verbose mode
  -V, --version     display version number
  -1, --fast        compress faster
  -9, --best        compress better

pigz options:
  -p, --processes=N   use N threads on the embedded default (default: CPUs)
  -b, --blocksize=KIB chunk size in KiB (default 1024, at least 32)
  -i, --independent   compress chunks independently (no shared dictionary)
  -m, --no-time       do not store the modification time
  -M, --time          store the modification time (the default)

Cluster (default: DASK_SCHEDULER_ADDRESS or Dask's config, else this process):
      --scheduler=ADDR       run on the Dask scheduler at ADDR (tcp://, tls://)
      --scheduler-file=FILE  run on the scheduler that `dask scheduler` wrote to FILE
      --cluster=local        start an in-process Dask LocalCluster

With no FILE, or when FILE is -, read standard input.

Report bugs to the octoray issue tracker.
"""


LICENSE = f"""{PROGRAM} {__version__} (octoray)
This is free software under the MIT license: you may change and redistribute it.
There is NO WARRANTY, to the extent permitted by law.
"""


class Settings:
    """What the options asked for, and the run's exit status so far."""

    def __init__(self):
        self.stdout = self.decompress = self.test = self.force = self.keep = False
        self.save_name = self.save_time = True
        self.quiet = False
        self.verbose = 0
        self.suffix = ".gz"
        self.level = 6
        self.processes: int | None = None
        self.block_size = 1 << 20
        self.independent = self.synchronous = False
        self.status = OK
        self.scheduler = self.scheduler_file = self.cluster = None
        self.executor = None


class Fatal(Exception):
    """Ends the whole run with a message and status 1."""


def message(text: str) -> None:
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except OSError:
        pass


def error(settings: Settings, text: str) -> None:
    message(text)
    settings.status = ERROR


def warning(settings: Settings, text: str, quiet_hides: bool = True) -> None:
    if not (settings.quiet and quiet_hides):
        message(text)
    if settings.status == OK:
        settings.status = WARNING


def apply_options(found, settings: Settings) -> str | None:
    """Fold parsed options into `settings`; returns 'help' or 'version' when one was asked for."""
    action = None
    for key, value, spelled in found:
        if key.startswith("level"):
            settings.level = int(key[5:])
        elif key == "fast":
            settings.level = 1
        elif key == "best":
            settings.level = 9
        elif key in ("stdout", "force", "keep", "independent"):
            setattr(settings, key, True)
        elif key == "decompress":
            settings.decompress = True
        elif key == "test":
            settings.test = True
        elif key == "no-name":
            settings.save_name = settings.save_time = False
        elif key == "name":
            settings.save_name = settings.save_time = True
        elif key == "no-time":
            settings.save_time = False
        elif key == "time":
            settings.save_time = True
        elif key == "quiet":
            settings.quiet, settings.verbose = True, 0
        elif key == "verbose":
            settings.verbose += 1
            settings.quiet = False
        elif key == "suffix":
            if not value or "/" in value:
                raise Fatal(f"invalid suffix '{value}'")
            settings.suffix = value
        elif key == "processes":
            settings.processes = _positive_int(value, f"invalid number of processes: {value}")
        elif key == "blocksize":
            kib = _positive_int(value, f"invalid block size: {value}")
            if kib < 32:
                raise Fatal("block size too small (must be >= 32K)")
            settings.block_size = kib * 1024
        elif key in ("scheduler", "scheduler-file"):
            setattr(settings, key.replace("-", "_"), value)
        elif key == "cluster":
            if value != "local":
                raise Fatal(f"--cluster takes 'local', not '{value}'")
            settings.cluster = value
        elif key in ("help", "version", "license"):
            action = action or key
        elif key == "synchronous":
            settings.synchronous = True
        elif key == "ascii":
            message(f"{PROGRAM}: option --ascii ignored on this system")
        elif key == "bits":
            pass  # gzip accepts and ignores its hidden LZW option
        elif key == "lzw":
            raise UsageError("-Z not supported in this version")
        elif key in NOT_YET:
            raise Fatal(f"{NOT_YET[key]} is not supported yet")
    return action


def _positive_int(text: str, complaint: str) -> int:
    try:
        number = int(text, 10)
    except ValueError:
        raise Fatal(complaint) from None
    if number < 1:
        raise Fatal(complaint)
    return number


# --- partial outputs are removed when a signal ends the run -------------------------------

_partial_output: str | None = None


def _remove_partial_and_die(signum, _frame) -> None:
    if _partial_output:
        try:
            os.unlink(_partial_output)
        except OSError:
            pass
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_signal_handlers() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `fgzip -dc big | head` ends silently
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, _remove_partial_and_die)


# --- the work -------------------------------------------------------------------------------

def _executor(settings: Settings):
    if settings.executor is None:
        from octoray.engine.cluster import open_executor

        settings.executor = open_executor(threads=settings.processes, scheduler=settings.scheduler,
                                          scheduler_file=settings.scheduler_file, cluster=settings.cluster)
    return settings.executor


def _ratio_text(totals) -> str:
    return f"{totals.ratio_saved():5.1f}%"


def _has_suffix(name: str, suffix: str) -> str | None:
    """The compressed suffix `name` ends with, spelled as in `name`."""
    lower = name.lower()
    for candidate in (suffix, *KNOWN_SUFFIXES):
        if lower.endswith(candidate.lower()):
            return name[len(name) - len(candidate):]
    return None


def _strip_suffix(name: str, suffix: str) -> str | None:
    """The output name for decompressing `name`, or None if it has no compressed suffix."""
    found = _has_suffix(name, suffix)
    if found is None or len(found) == len(name):
        return None
    base = name[: -len(found)]
    return base + ".tar" if found.lower() in (".tgz", ".taz") else base


def _run_compression(fd_in: int, write, settings: Settings, name: bytes | None, mtime: int):
    from octoray.jobs.gzip import compress_stream

    return compress_stream(fd_in, write, _executor(settings), level=settings.level,
                           block_size=settings.block_size, independent=settings.independent,
                           name=name if settings.save_name else None,
                           mtime=mtime if settings.save_time else 0)


def _run_decompression(fd_in: int, write):
    from octoray.jobs.gzip import decompress_stream

    return decompress_stream(fd_in, write)


def _stdout_writer():
    from octoray.streams import BackgroundWriter, enlarge_pipe

    fd = sys.stdout.fileno()
    enlarge_pipe(fd)
    return BackgroundWriter(fd)


def _discard(_data) -> None:
    pass


def process_stdin(settings: Settings) -> None:
    from octoray.streams import enlarge_pipe

    fd = sys.stdin.fileno()
    compressing = not (settings.decompress or settings.test)
    if not settings.force:
        if compressing and os.isatty(sys.stdout.fileno()):
            raise Fatal("compressed data not written to a terminal. Use -f to force compression.\n"
                        f"For help, type: {PROGRAM} -h")
        if not compressing and os.isatty(fd):
            raise Fatal("compressed data not read from a terminal. Use -f to force decompression.\n"
                        f"For help, type: {PROGRAM} -h")
    enlarge_pipe(fd)
    if compressing:
        st = os.fstat(fd)
        mtime = int(st.st_mtime) if stat.S_ISREG(st.st_mode) else 0  # gzip: 0 for pipes
        totals = _to_stdout(lambda write: _run_compression(fd, write, settings, None, mtime))
        if settings.verbose:
            message(_ratio_text(totals))
    else:
        _decompress_to_stdout_or_test(fd, "stdin", settings)


def _decompress_to_stdout_or_test(fd: int, label: str, settings: Settings) -> None:
    """-dc or -t: decompress `fd` to stdout (or nowhere) and report as gzip does."""
    from octoray.jobs.gzip import FormatError

    try:
        if settings.test:
            _totals, warn = _run_decompression(fd, _discard)
        else:
            _totals, warn = _to_stdout(lambda write: _run_decompression(fd, write))
    except FormatError as failure:
        error(settings, f"\n{PROGRAM}: {label}: {failure.reason}")
        return
    if warn:
        warning(settings, f"\n{PROGRAM}: {label}: {warn}")
    elif settings.test and settings.verbose:
        message(" OK" if label == "stdin" else f"{label}:\t OK")


def _close_quietly(writer) -> None:
    if writer is not None:
        try:
            writer.close()
        except OSError:
            pass


def process_file(path: str, settings: Settings) -> None:
    if settings.decompress or settings.test:
        _decompress_file(path, settings)
    else:
        _compress_file(path, settings)


def _open_input(path: str, settings: Settings) -> tuple[int, os.stat_result] | None:
    try:
        st = os.lstat(path)
    except OSError as failure:
        error(settings, f"{PROGRAM}: {path}: {failure.strerror}")
        return None
    if stat.S_ISDIR(st.st_mode):
        warning(settings, f"{PROGRAM}: {path} is a directory -- ignored")
        return None
    if stat.S_ISLNK(st.st_mode) and not (settings.force or settings.stdout):
        error(settings, f"{PROGRAM}: {path}: Too many levels of symbolic links")
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
        st = os.fstat(fd)
    except OSError as failure:
        error(settings, f"{PROGRAM}: {path}: {failure.strerror}")
        return None
    if not stat.S_ISREG(st.st_mode) and not settings.stdout:
        os.close(fd)
        warning(settings, f"{PROGRAM}: {path} is not a directory or a regular file - ignored")
        return None
    return fd, st


def _compress_file(path: str, settings: Settings) -> None:
    suffix = _has_suffix(os.path.basename(path), settings.suffix)
    if suffix and not settings.force and not settings.stdout:
        if not settings.quiet:
            message(f"{PROGRAM}: {path} already has {suffix} suffix -- unchanged")
        return
    opened = _open_input(path, settings)
    if opened is None:
        return
    fd, st = opened
    name = os.fsencode(os.path.basename(path))
    try:
        if settings.stdout:
            _to_stdout(lambda write: _run_compression(fd, write, settings, name, int(st.st_mtime)))
            return
        out_path = path + settings.suffix
        done = _to_file(settings, path, out_path, st,
                        lambda write: _run_compression(fd, write, settings, name, int(st.st_mtime)))
        if done is not None and settings.verbose:
            verb = "created" if settings.keep else "replaced with"
            message(f"{path}:\t{_ratio_text(done)} -- {verb} {out_path}")
    finally:
        os.close(fd)


def _decompress_file(path: str, settings: Settings) -> None:
    from octoray.jobs.gzip import FormatError

    if not os.path.lexists(path):
        for candidate in (settings.suffix, ".gz", ".z", "-z", ".Z"):
            if os.path.lexists(path + candidate):
                path += candidate
                break
    base = _strip_suffix(os.path.basename(path), settings.suffix)
    if base is None and not (settings.stdout or settings.test):
        if os.path.lexists(path):
            warning(settings, f"{PROGRAM}: {path}: unknown suffix -- ignored")
            return
    opened = _open_input(path, settings)
    if opened is None:
        return
    fd, st = opened
    try:
        if settings.test or settings.stdout:
            _decompress_to_stdout_or_test(fd, path, settings)
            return
        out_path = os.path.join(os.path.dirname(path), base)
        try:
            result = _to_file(settings, path, out_path, st, lambda write: _run_decompression(fd, write))
        except FormatError as failure:
            error(settings, f"\n{PROGRAM}: {path}: {failure.reason}")
            return
        if result is not None:
            totals, warn = result
            if warn:
                warning(settings, f"\n{PROGRAM}: {path}: {warn}")
    finally:
        os.close(fd)


def _to_stdout(work):
    writer = _stdout_writer()
    try:
        result = work(writer.write)
        writer.close()
        return result
    except OSError as failure:
        _close_quietly(writer)
        if failure.filename is None:
            raise Fatal(f"\n{PROGRAM}: stdout: {os.strerror(failure.errno)}") from None
        raise
    except BaseException:
        _close_quietly(writer)
        raise


def _to_file(settings: Settings, in_path: str, out_path: str, st: os.stat_result, work):
    """Write `work`'s output to a temporary file beside `out_path`, then rename it into place
    and remove the input; nothing is overwritten or removed before the output is complete."""
    global _partial_output
    from octoray.streams import write_all

    if os.path.lexists(out_path) and not settings.force:
        warning(settings, f"{PROGRAM}: {out_path} already exists;\tnot overwritten", quiet_hides=False)
        return None
    directory = os.path.dirname(out_path) or "."
    temporary = os.path.join(directory, f".{os.path.basename(out_path)}.fgzip{os.getpid()}")
    try:
        fd_out = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as failure:
        error(settings, f"{PROGRAM}: {out_path}: {failure.strerror}")
        return None
    _partial_output = temporary
    try:
        try:
            result = work(lambda data: write_all(fd_out, data))
            if settings.synchronous:
                os.fsync(fd_out)
            os.fchmod(fd_out, stat.S_IMODE(st.st_mode))
            try:
                os.fchown(fd_out, st.st_uid, st.st_gid)
            except OSError:
                pass
        finally:
            os.close(fd_out)
        os.utime(temporary, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(temporary, out_path)
        _partial_output = None
    except BaseException as failure:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        _partial_output = None
        if isinstance(failure, OSError):  # writing the output failed (a full disk, say)
            error(settings, f"{PROGRAM}: {out_path}: {failure.strerror}")
            return None
        raise
    if not settings.keep:
        try:
            os.unlink(in_path)
        except OSError as failure:
            error(settings, f"{PROGRAM}: {in_path}: {failure.strerror}")
    return result


def run(argv: list[str], settings: Settings) -> int:
    try:
        found, operands = parse(argv, OPTIONS)
    except UsageError as failure:
        message(f"{PROGRAM}: {failure}\nTry `{PROGRAM} --help' for more information.")
        return ERROR
    try:
        action = apply_options(found, settings)
    except UsageError as failure:
        message(f"{PROGRAM}: {failure}\nTry `{PROGRAM} --help' for more information.")
        return ERROR
    if action == "license":
        sys.stdout.write(LICENSE)
        return OK
    if action == "help":
        sys.stdout.write(HELP)
        return OK
    if action == "version":
        sys.stdout.write(f"{PROGRAM} {__version__} (octoray)\n")
        return OK
    if settings.test:
        settings.stdout = True
    for operand in operands or ["-"]:
        if operand == "-":
            process_stdin(settings)
        else:
            process_file(operand, settings)
    return settings.status


class _NoCluster(Exception):
    """Stands in for ClusterError when no cluster was used (never raised)."""


def _cluster_error():
    """The exception a cluster raises, without importing Dask when none is in use."""
    module = sys.modules.get("octoray.engine.dask_executor")
    return module.ClusterError if module else _NoCluster


def main(argv: list[str] | None = None) -> int:
    _install_signal_handlers()
    settings = Settings()
    try:
        status = run(sys.argv[1:] if argv is None else argv, settings)
    except _cluster_error() as failure:
        message(f"{PROGRAM}: {failure}")
        status = ERROR
    except Fatal as failure:
        text = str(failure)
        message(text if text.startswith("\n") else f"{PROGRAM}: {text}")
        status = ERROR
    except OSError as failure:
        where = failure.filename if failure.filename is not None else "stdout"
        message(f"{PROGRAM}: {where}: {failure.strerror or failure}")
        status = ERROR
    except Exception as failure:  # a bug: still no traceback, but say what broke
        message(f"{PROGRAM}: internal error: {type(failure).__name__}: {failure}")
        status = ERROR
    finally:
        if settings.executor is not None:
            settings.executor.close()
    if settings.executor is not None and not getattr(settings.executor, "in_process", True):
        # Dask's event-loop thread and exit handlers can still print as the interpreter
        # ends; every output is complete and closed, so leave now.
        _flush_and_exit(status)
    return status


def _flush_and_exit(status: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
