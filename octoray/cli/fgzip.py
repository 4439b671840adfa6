"""fgzip: gzip's command line over octoray's parallel engine.

This layer parses options, handles files (names, suffixes, modes, times, temporary outputs),
prints gzip's messages and chooses the exit status: 0 ok, 1 error, 2 warning.  The work on
the data is done by octoray.jobs.gzip, which never sees an option.
"""

from __future__ import annotations

import errno
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

# In gzip's own table order (its ambiguity messages list candidates in this order), then pigz's
# and octoray's (extra=True: long names gzip lacks, which abbreviations reach only failing gzip's).
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
    Option("processes", "p", ("processes",), True, extra=True),
    Option("blocksize", "b", ("blocksize",), True, extra=True),
    Option("independent", "i", ("independent",), extra=True),
    Option("no-time", "m", ("no-time",), extra=True),
    Option("no-time", "T", (), extra=True),
    Option("time", "M", ("time",), extra=True),
    Option("zlib", "z", ("zlib",), extra=True),
    Option("zip", "K", ("zip",), extra=True),
    Option("alias", "A", ("alias",), True, extra=True),
    Option("comment", "C", ("comment",), True, extra=True),
    Option("huffman", "H", ("huffman",), extra=True),
    Option("rle", "U", ("rle",), extra=True),
    Option("scheduler", "", ("scheduler",), True, extra=True),
    Option("scheduler-file", "", ("scheduler-file",), True, extra=True),
    Option("cluster", "", ("cluster",), True, extra=True),
    Option("zopfli", "F", ("first",), extra=True),
    Option("zopfli", "I", ("iterations",), True, extra=True),
    Option("zopfli", "J", ("maxsplits",), True, extra=True),
    Option("zopfli", "O", ("oneblock",), extra=True),
]
LEVEL = "level"  # a run of digits: -1..-9, pigz's -0 and -11
ENV_ALLOWED = {LEVEL, "fast", "best", "no-name", "name", "quiet", "verbose", "rsyncable"}

HELP = f"""Usage: {PROGRAM} [OPTION]... [FILE]...
Compress or uncompress FILEs (by default, compress FILES in-place), in parallel
chunks on the octoray engine.  Output is standard gzip.

Mandatory arguments to long options are mandatory for short options too.

  -c, --stdout      write on standard output, keep original files unchanged
  -d, --decompress  decompress
  -f, --force       force overwrite of output file and compress links
  -h, --help        give this help
  -k, --keep        keep (don't delete) input files
  -l, --list        list compressed file contents
  -L, --license     display software license
  -n, --no-name     do not save or restore the original name and timestamp
  -N, --name        save or restore the original name and timestamp
  -q, --quiet       suppress all warnings
  -r, --recursive   operate recursively on directories
      --rsyncable   make rsync-friendly archive
  -S, --suffix=SUF  use suffix SUF on compressed files
      --synchronous synchronous output (safer if system crashes, but slower)
  -t, --test        test compressed file integrity
  -v, --verbose     verbose mode
  -V, --version     display version number
  -1, --fast        compress faster
  -9, --best        compress better

pigz options:
  -0                  store without compression;  -11: strongest (libdeflate 12)
  -p, --processes=N   use N threads on the embedded default (default: CPUs)
  -b, --blocksize=KIB chunk size in KiB (default 1024, at least 32)
  -i, --independent   compress chunks independently (no shared dictionary)
  -R, --rsyncable     cut chunks where the content says (rsync-friendly)
  -m, -T, --no-time   do not store the modification time
  -M, --time          store the modification time (the default)
  -C, --comment=TEXT  put TEXT in the gzip header as a comment
  -H, --huffman       Huffman coding only;  -U, --rle: run-length coding only
  -z, --zlib          write zlib (.zz) instead of gzip
  -K, --zip           write a one-entry PKZip (.zip) instead of gzip
  -A, --alias=NAME    the zip entry's name when reading standard input
  -Y, --synchronous   same as --synchronous
  -F, -I N, -J N, -O  pigz's zopfli tuning: accepted and ignored

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
        self.list = self.recursive = self.rsyncable = False
        self.name_flag: bool | None = None  # -N / -n; unset: save when compressing only
        self.time_flag: bool | None = None  # -N / -n, pigz's -M / -m
        self.quiet = False
        self.verbose = 0
        self.suffix = ".gz"
        self.suffix_set = False
        self.level = 6
        self.processes: int | None = None
        self.block_size = 1 << 20
        self.independent = self.synchronous = False
        self.form = "gzip"  # pigz's -z (zlib) and -K (zip)
        self.alias: str | None = None
        self.comment: bytes | None = None
        self.strategy: str | None = None  # pigz's -H (huffman) and -U (rle)
        self.status = OK
        self.scheduler = self.scheduler_file = self.cluster = None
        self.executor = None
        self.lister: Lister | None = None

    def save_name(self) -> bool:
        return self.name_flag is not False

    def save_time(self) -> bool:
        return self.time_flag is not False

    def restore(self) -> bool:
        """-N when decompressing: take the name and time from the header."""
        return self.name_flag is True


class Fatal(Exception):
    """Ends the whole run with a message and status 1."""


def message(text: str, end: str = "\n") -> None:
    try:
        sys.stderr.write(text + end)
        sys.stderr.flush()
    except OSError:
        pass


def error(settings: Settings, text: str) -> None:
    message(text)
    settings.status = ERROR


def warning(settings: Settings, text: str, quiet_hides: bool = True) -> None:
    """gzip's WARN: printed unless -q, but the status is 2 either way."""
    if not (settings.quiet and quiet_hides):
        message(text)
    if settings.status == OK:
        settings.status = WARNING


ACTIONS = ("help", "version", "license")


def apply_options(found, settings: Settings) -> str | None:
    """Fold parsed options into `settings`; returns 'help', 'version' or 'license' when one was
    asked for.  As in gzip, such an option acts where it stands (the parse stops there) and
    the values are checked only once every option is read (``-S '' -S .x`` is fine)."""
    checks: list = []
    for key, value, _spelled in found:
        if key in ACTIONS:
            return key
        _apply(key, value, settings, checks)
    for check in checks:
        check()
    if not settings.suffix:
        raise Fatal("invalid suffix ''")
    return None


_FLAGS = {"stdout": "stdout", "force": "force", "keep": "keep", "independent": "independent",
          "decompress": "decompress", "test": "test", "list": "list", "recursive": "recursive",
          "rsyncable": "rsyncable", "synchronous": "synchronous"}
_SETTINGS = {"no-name": {"name_flag": False, "time_flag": False}, "name": {"name_flag": True, "time_flag": True},
             "no-time": {"time_flag": False}, "time": {"time_flag": True},
             "fast": {"level": 1}, "best": {"level": 9}, "zlib": {"form": "zlib"}, "zip": {"form": "zip"},
             "huffman": {"strategy": "huffman"}, "rle": {"strategy": "rle"},
             "quiet": {"quiet": True, "verbose": 0}}


def _apply(key: str, value: str | None, settings: Settings, checks: list) -> None:
    """Set what `key` asks for; checks of a value wait in `checks` (gzip checks after its loop)."""
    if key in _FLAGS:
        setattr(settings, _FLAGS[key], True)
    elif key in _SETTINGS:
        for name, setting in _SETTINGS[key].items():
            setattr(settings, name, setting)
    elif key == LEVEL:
        settings.level = 11 if value == "11" else int(value[-1])
    elif key == "verbose":
        settings.verbose += 1
        settings.quiet = False
    elif key == "suffix":  # gzip takes any suffix but '' (checked at the end), even one with a '/'
        settings.suffix, settings.suffix_set = value, True
    elif key == "processes":
        checks.append(lambda: setattr(settings, "processes",
                                      _positive_int(value, f"invalid number of processes: {value}")))
    elif key == "blocksize":
        checks.append(lambda: _set_block_size(settings, value))
    elif key == "comment":
        settings.comment = os.fsencode(value)
    elif key == "alias":
        settings.alias = value
    elif key in ("scheduler", "scheduler-file"):
        setattr(settings, key.replace("-", "_"), value)
    elif key == "cluster":
        if value != "local":
            checks.append(lambda: _raise(Fatal(f"--cluster takes 'local', not '{value}'")))
        settings.cluster = value
    elif key == "ascii":
        checks.insert(0, lambda: message(f"{PROGRAM}: option --ascii ignored on this system"))
    elif key == "lzw":
        raise UsageError("-Z not supported in this version")
    # "bits": gzip accepts and ignores its hidden LZW option; "zopfli": pigz's -F -I -J -O tune
    # zopfli, which fgzip's -11 (libdeflate) does not use


def _raise(failure: Exception):
    raise failure


def _set_block_size(settings: Settings, value: str) -> None:
    kib = _positive_int(value, f"invalid block size: {value}")
    if kib < 32:
        raise Fatal("block size too small (must be >= 32K)")
    settings.block_size = kib * 1024


def _positive_int(text: str, complaint: str) -> int:
    try:
        number = int(text, 10)
    except ValueError:
        raise Fatal(complaint) from None
    if number < 1:
        raise Fatal(complaint)
    return number


def apply_environment(settings: Settings) -> None:
    """gzip 1.12's GZIP variable: only level, -n/-N, -q/-v and --rsyncable, with a warning."""
    words = os.environ.get("GZIP", "").split()
    if not words:
        return
    if "--" in words:
        raise UsageError("--: option not valid in GZIP environment variable")
    found, operands = parse(words, OPTIONS, digits=LEVEL)
    if operands:
        raise UsageError(f"{operands[0]}: non-option in GZIP environment variable")
    for key, value, spelled in found:
        if key not in ENV_ALLOWED:
            raise UsageError(f"{spelled}: option not valid in GZIP environment variable")
        if key == LEVEL:  # gzip's digits one by one: no -0, and -11 is -1
            if "0" in value:
                raise UsageError("invalid option -- '0'")
            value = value[-1]
        _apply(key, value, settings, [])
    if not settings.quiet:
        message(f"{PROGRAM}: warning: GZIP environment variable is deprecated; use an alias or script")


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
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGXCPU):
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, _remove_partial_and_die)


# --- the work -------------------------------------------------------------------------------

def _executor(settings: Settings):
    if settings.executor is None:
        from octoray.engine.cluster import open_executor

        settings.executor = open_executor(threads=settings.processes, scheduler=settings.scheduler,
                                          scheduler_file=settings.scheduler_file, cluster=settings.cluster)
    return settings.executor


def display_ratio(num: int, den: int) -> str:
    """gzip's "%5.1f%%" of num/den, 0 when den is 0."""
    return f"{100.0 * num / den if den else 0.0:5.1f}%"


def header_bytes(totals) -> int | None:
    """gzip's header_bytes after reading a file: the first header and trailer when the file was
    one member and nothing more, 0 once it looked past the first member; None: no header."""
    if totals is None or totals.first_header is None:
        return None
    return 0 if totals.more else totals.first_header.length + 8


def _decompression_ratio(totals) -> str:
    """gzip counts the last member's output only (it restarts the count at each member, after
    reading the magic: data copied by -cdf after a member counts one byte short)."""
    out = totals.last_size
    if totals.copied:
        out = totals.copied_bytes - (1 if totals.members and totals.copied_bytes else 0)
    return display_ratio(out - (totals.bytes_in - (header_bytes(totals) or 0)), out)


class Abort(Exception):
    """gzip gives up the whole run on a cut-off or malformed deflate stream (status 1)."""


def format_error(settings: Settings, label: str, failure) -> None:
    from octoray.jobs.gzip import CRC_ERROR, FORMAT_VIOLATED, LENGTH_ERROR, UNEXPECTED_EOF

    error(settings, fault_text(label, failure.reason))
    checking = settings.test or settings.list  # gzip -t and -l go on after a bad check value
    if failure.reason in (UNEXPECTED_EOF, FORMAT_VIOLATED) or (
            failure.reason in (CRC_ERROR, LENGTH_ERROR) and not checking):
        raise Abort


def fault_text(label: str, reason: str) -> str:
    """gzip's message: header faults on one line, "a.gz is encrypted" without a colon; faults in
    the data after an empty line."""
    from octoray.jobs.gzip import ENCRYPTED

    if reason == ENCRYPTED or reason.startswith("has flags"):
        return f"{PROGRAM}: {label} {reason}"
    if reason.startswith(("unknown method", "header checksum")):
        return f"{PROGRAM}: {label}: {reason}"
    return f"\n{PROGRAM}: {label}: {reason}"


def _has_suffix(name: str, suffix: str) -> str | None:
    """The compressed suffix `name` ends with, spelled as in `name`: the longest of the -S
    suffix and gzip's own that matches in any letter case, leaving at least one character
    before it (gzip: `-S z` takes "i.z" to "i", `-S e.gz` takes "a.gz" to "a"; ".gz" has none)."""
    lower = name.lower()
    found = [c for c in (suffix, *KNOWN_SUFFIXES) if len(name) > len(c) and lower.endswith(c.lower())]
    if not found:
        return None
    longest = max(len(c) for c in found)
    return name[len(name) - longest:]


def _strip_suffix(name: str, suffix: str) -> str | None:
    """The output name for decompressing `name`, or None if it has no compressed suffix."""
    found = _has_suffix(name, suffix)
    if found is None:
        return None
    base = name[: -len(found)]
    return base + ".tar" if found.lower() in (".tgz", ".taz") else base


def _run_compression(fd_in: int, write, settings: Settings, name: bytes | None, mtime: int, mode: int = 0o644):
    from octoray.jobs.gzip import Wrapper, compress_stream

    mtime = mtime if settings.save_time() else 0
    if settings.form == "zip":
        name = os.fsencode(settings.alias) if name is None and settings.alias else name
    elif not settings.save_name():
        name = None
    wrapper = Wrapper(settings.form, name=name, mtime=mtime, level=settings.level,
                      comment=settings.comment, mode=mode)
    return compress_stream(fd_in, write, _executor(settings), level=settings.level,
                           block_size=settings.block_size, independent=settings.independent,
                           strategy=settings.strategy, rsyncable=settings.rsyncable, wrapper=wrapper)


def _cluster_note(settings: Settings) -> None:
    """-v on a cluster: how the data reached the workers (read by them, or sent)."""
    note = getattr(settings.executor, "note", None)
    if settings.verbose and note:
        message(f"{PROGRAM}: {note}")
        settings.executor.note = None


def _run_decompression(fd_in: int, write, settings: Settings, on_header=None):
    from octoray.jobs.gzip import decompress_stream

    passthrough = settings.force and (settings.stdout or settings.test) and not settings.list
    return decompress_stream(fd_in, write, passthrough=passthrough, on_header=on_header)


def _stdout_writer():
    from octoray.streams import BackgroundWriter, enlarge_pipe

    fd = sys.stdout.fileno()
    enlarge_pipe(fd)
    return BackgroundWriter(fd)


def _discard(_data) -> None:
    pass


def _stdin_mtime(fd: int) -> int:
    st = os.fstat(fd)
    return int(st.st_mtime) if stat.S_ISREG(st.st_mode) else 0  # gzip: 0 for pipes


def process_stdin(settings: Settings) -> None:
    from octoray.streams import enlarge_pipe

    fd = sys.stdin.fileno()
    compressing = not (settings.decompress or settings.test or settings.list)
    if not settings.force and not settings.list:  # gzip -l reads a terminal
        if compressing and os.isatty(sys.stdout.fileno()):
            raise Fatal("compressed data not written to a terminal. Use -f to force compression.\n"
                        f"For help, type: {PROGRAM} -h")
        if not compressing and os.isatty(fd):
            raise Fatal("compressed data not read from a terminal. Use -f to force decompression.\n"
                        f"For help, type: {PROGRAM} -h")
    enlarge_pipe(fd)
    if settings.list:
        _list(fd, "stdout", _stdin_mtime(fd), settings)
    elif compressing:
        mtime = _stdin_mtime(fd)
        totals = _compress_to_stdout(fd, settings, None, mtime)
        if totals is not None and settings.verbose:
            message(display_ratio(totals.bytes_in - (totals.bytes_out - totals.overhead), totals.bytes_in))
            _cluster_note(settings)
    else:
        _decompress_to_stdout_or_test(fd, "stdin", settings)


def _compress_to_stdout(fd: int, settings: Settings, name: bytes | None, mtime: int, mode: int = 0o644):
    from octoray.formats.gzip import ZipTooLarge

    try:
        return _to_stdout(lambda write: _run_compression(fd, write, settings, name, mtime, mode))
    except ZipTooLarge as failure:
        raise Fatal(str(failure)) from None


def _report_decompression(settings: Settings, label: str, totals, warn: str | None) -> bool:
    """Print a trailing-data warning or a later member's header fault; False after a fault
    (gzip then stops the file there, keeping what it wrote, and says nothing more of it)."""
    from octoray.jobs.gzip import TRAILING, TRAILING_ZEROS

    if warn and warn not in TRAILING:
        error(settings, fault_text(label, warn))
        return False
    if warn and (warn != TRAILING_ZEROS or settings.verbose):
        warning(settings, f"\n{PROGRAM}: {label}: {warn}")
    return True


def _decompress_to_stdout_or_test(fd: int, label: str, settings: Settings) -> None:
    """-dc or -t: decompress `fd` to stdout (or nowhere) and report as gzip does."""
    from octoray.jobs.gzip import FormatError

    prefix = None if label == "stdin" else (lambda: _verbose_prefix(settings, label))
    try:
        if settings.test:
            totals, warn = _run_decompression(fd, _discard, settings, prefix)
        else:
            totals, warn = _to_stdout(lambda write: _run_decompression(fd, write, settings, prefix))
    except FormatError as failure:
        format_error(settings, label, failure)
        return
    if not _report_decompression(settings, label, totals, warn):
        return
    if settings.verbose and not (label == "stdin" and warn):  # gzip: no " OK" after a stdin warning
        if settings.test:
            message(" OK")
        elif label == "stdin":
            pass  # gzip -dv reports nothing for stdin
        else:
            verb = "created" if settings.keep else "replaced with"
            message(f"{_decompression_ratio(totals)} -- {verb} stdout")


def _close_quietly(writer) -> None:
    if writer is not None:
        try:
            writer.close()
        except OSError:
            pass


# --- -l: gzip's listing ---------------------------------------------------------------------

class Lister:
    """gzip -l's running state: the heading once, totals, and header_bytes carried over."""

    def __init__(self):
        self.heading_done = False
        self.total_in = self.total_out = 0
        self.header_bytes = 0

    def row(self, settings: Settings, totals, crc: int, mtime: int, name: str) -> None:
        if not self.heading_done:
            self.heading_done = True
            if settings.verbose:
                _print("method  crc     date  time  ", end="")
            if not settings.quiet:
                _print(f"{'compressed':>19} {'uncompressed':>19}  ratio uncompressed_name")
        line = ""
        if settings.verbose:
            line = f"defla {crc:08x} {_list_date(mtime)} "
        bytes_in, bytes_out = totals.bytes_in, totals.last_size
        self.total_in += bytes_in
        self.total_out += bytes_out
        ratio = display_ratio(bytes_out - (bytes_in - self.header_bytes), bytes_out)
        _print(f"{line}{bytes_in:19d} {bytes_out:19d} {ratio} {name}")

    def totals(self, settings: Settings) -> None:
        if self.total_in <= 0 or self.total_out <= 0:
            return
        line = " " * 28 if settings.verbose else ""
        if settings.verbose or not settings.quiet:
            line += f"{self.total_in:19d} {self.total_out:19d} "
        ratio = display_ratio(self.total_out - (self.total_in - self.header_bytes), self.total_out)
        _print(f"{line}{ratio} (totals)")


def _print(text: str, end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


def _list_date(mtime: int) -> str:
    import time

    try:
        t = time.localtime(mtime)
    except (OverflowError, OSError, ValueError):
        return "??? ?? ??:??"
    month = "JanFebMarAprMayJunJulAugSepOctNovDec"[3 * (t.tm_mon - 1):3 * t.tm_mon]
    return f"{month}{t.tm_mday:3d} {t.tm_hour:02d}:{t.tm_min:02d}"


def _list(fd: int, name: str, mtime: int, settings: Settings, label: str = "stdin") -> None:
    """gzip 1.12 decompresses the whole file for -l; a row only when it is sound to the end."""
    from octoray.jobs.gzip import TRAILING, TRAILING_ZEROS, FormatError

    lister = settings.lister
    try:
        totals, warn = _run_decompression(fd, _discard, settings)
    except FormatError as failure:
        _update_header_bytes(lister, failure.totals)
        format_error(settings, label, failure)
        if failure.totals is not None and failure.totals.first_header is not None:
            lister.totals(settings)
        return
    _update_header_bytes(lister, totals)
    if warn and warn not in TRAILING:
        error(settings, fault_text(label, warn))
        return
    if warn:
        if warn != TRAILING_ZEROS or settings.verbose:
            warning(settings, f"\n{PROGRAM}: {label}: {warn}")
        lister.totals(settings)
        return
    header = totals.first_header
    if settings.restore():
        if header.mtime:
            mtime = header.mtime
        if header.name and name != "stdout":
            name = os.path.join(os.path.dirname(name), _header_basename(header.name))
    lister.row(settings, totals, totals.last_crc, mtime, name)


def _update_header_bytes(lister: Lister, totals) -> None:
    found = header_bytes(totals)
    if found is not None:
        lister.header_bytes = found


def _header_basename(name: bytes) -> str:
    return os.fsdecode(name).rsplit("/", 1)[-1]


# --- files ----------------------------------------------------------------------------------

def process_file(path: str, settings: Settings) -> None:
    if settings.decompress or settings.test or settings.list:
        _decompress_file(path, settings)
    else:
        _compress_file(path, settings)


def _treat_directory(path: str, settings: Settings) -> None:
    """-r: every entry in readdir's order, as gzip walks (os.listdir keeps that order)."""
    try:
        entries = os.listdir(path)
    except OSError as failure:
        error(settings, f"{PROGRAM}: {path}: {failure.strerror}")
        return
    for entry in entries:
        process_file(path + entry if path.endswith("/") else f"{path}/{entry}", settings)


def _open_input(path: str, settings: Settings) -> tuple[int, os.stat_result] | None:
    """Open as gzip does (not following a link without -f or -c, not waiting on a FIFO) and
    refuse what gzip refuses; a directory under -r is walked here."""
    follow = settings.force or settings.stdout
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
        st = os.fstat(fd)
    except OSError as failure:  # gzip's perror(name): an empty name leaves no "name: "
        error(settings, f"{PROGRAM}: {path + ': ' if path else ''}{failure.strerror}")
        return None
    refusal = _refusal(path, st, settings)
    if refusal is not None:
        os.close(fd)
        if refusal == "directory" and settings.recursive:
            _treat_directory(path, settings)
        elif refusal == "directory":
            warning(settings, f"{PROGRAM}: {path} is a directory -- ignored")
        else:
            warning(settings, f"{PROGRAM}: {refusal}")
        return None
    os.set_blocking(fd, True)
    return fd, st


def _refusal(path: str, st: os.stat_result, settings: Settings) -> str | None:
    """gzip's reason for leaving a file alone, or None."""
    if stat.S_ISDIR(st.st_mode):
        return "directory"
    if settings.stdout or settings.test or settings.list:
        return None
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a directory or a regular file - ignored"
    if st.st_mode & stat.S_ISUID:
        return f"{path} is set-user-ID on execution - ignored"
    if st.st_mode & stat.S_ISGID:
        return f"{path} is set-group-ID on execution - ignored"
    if settings.force:
        return None
    if st.st_mode & stat.S_ISVTX:
        return f"{path} has the sticky bit set - file ignored"
    if st.st_nlink > 1:
        others = st.st_nlink - 1
        return f"{path} has {others} other link{'s' if others > 1 else ''} -- file ignored"
    return None


def _verbose_prefix(settings: Settings, path: str) -> None:
    if settings.verbose:
        message(f"{path}:\t", end="")


def _compress_file(path: str, settings: Settings) -> None:
    opened = _open_input(path, settings)
    if opened is None:
        return
    fd, st = opened
    try:
        suffix = _has_suffix(os.path.basename(path), settings.suffix)
        if suffix and not settings.force and not settings.stdout:
            if settings.verbose or not (settings.recursive or settings.quiet):
                message(f"{PROGRAM}: {path} already has {suffix} suffix -- unchanged")
            return
        name = os.fsencode(os.path.basename(path))
        mtime, mode = int(st.st_mtime), stat.S_IMODE(st.st_mode)
        verb = "created" if settings.keep else "replaced with"
        if settings.stdout:
            _verbose_prefix(settings, path)
            done = _compress_to_stdout(fd, settings, name, mtime, mode)
            out_path = "stdout"
        else:
            out_path = _shorten_for_suffix(path, _compress_suffix(settings), settings)
            if out_path is None:
                return
            done = _to_file(settings, path, out_path, st,
                            lambda write: _run_compression(fd, write, settings, name, mtime, mode),
                            before=lambda: _verbose_prefix(settings, path))
        if done is not None and settings.verbose:
            ratio = display_ratio(done.bytes_in - (done.bytes_out - done.overhead), done.bytes_in)
            message(f"{ratio} -- {verb} {out_path}")
            _cluster_note(settings)
    finally:
        os.close(fd)


def _name_max(directory: str) -> int:
    try:
        return os.pathconf(directory or ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _shorten_for_suffix(path: str, suffix: str, settings: Settings) -> str | None:
    """PATH+SUFFIX, or, where that name is too long for the directory, gzip's shorter one: a
    byte off the end of the last dot-separated part longer than 3 bytes (else 2, else 1), again
    until the name fits, with gzip's "NAME compressed to SHORTER" note."""
    directory, name = os.path.split(path)
    limit, stem, tail = _name_max(directory), os.fsencode(name), os.fsencode(suffix)
    if len(stem) + len(tail) <= limit:
        return path + suffix
    while len(stem) + len(tail) > limit:
        parts = stem.split(b".")
        for shortest in (3, 2, 1):
            longer = [i for i, part in enumerate(parts) if len(part) > shortest]
            if longer:
                parts[longer[-1]] = parts[longer[-1]][:-1]
                break
        else:
            error(settings, f"{PROGRAM}: {path}{suffix}: {os.strerror(errno.ENAMETOOLONG)}")
            return None
        stem = b".".join(parts)
    out_path = os.path.join(directory, os.fsdecode(stem + tail))
    if not (settings.quiet or settings.verbose):
        message(f"{PROGRAM}: {path} compressed to {out_path}")
    return out_path


def _truncate_name(path: str, settings: Settings) -> str:
    """-N with a stored name too long for the directory: cut from its end, as gzip warns."""
    directory, name = os.path.split(path)
    limit, raw = _name_max(directory), os.fsencode(name)
    if len(raw) <= limit:
        return path
    path = os.path.join(directory, os.fsdecode(raw[:limit]))
    warning(settings, f"{PROGRAM}: {path}: warning, name truncated")
    return path


def _compress_suffix(settings: Settings) -> str:
    if settings.suffix_set:
        return settings.suffix
    return {"zlib": ".zz", "zip": ".zip"}.get(settings.form, settings.suffix)


def _find_compressed(path: str, settings: Settings) -> str:
    """gzip -d NAME also finds NAME.gz (and its other suffixes) when NAME is missing."""
    following = settings.force or settings.stdout or settings.test or settings.list
    try:
        (os.stat if following else os.lstat)(path)
        return path
    except OSError as failure:
        if failure.errno != errno.ENOENT:  # "a.gz/" is "Not a directory", under its own name
            return path
    if _has_suffix(os.path.basename(path), settings.suffix):
        return path
    candidates = (settings.suffix, ".gz", ".z", "-z", ".Z")
    for candidate in candidates:
        if os.path.lexists(path + candidate):
            return path + candidate
    return path + settings.suffix  # named in the error, as gzip does


def _decompress_file(path: str, settings: Settings) -> None:
    path = _find_compressed(path, settings)
    opened = _open_input(path, settings)
    if opened is None:
        return
    fd, st = opened
    try:
        base = _strip_suffix(os.path.basename(path), settings.suffix)
        # gzip -dc never looks at the suffix; -t and -l try any file, except under -r
        checked = settings.test or settings.list or not settings.stdout
        if base is None and checked and (settings.recursive or not (settings.test or settings.list)):
            if settings.verbose or not (settings.recursive or settings.quiet):
                warning(settings, f"{PROGRAM}: {path}: unknown suffix -- ignored")
            return
        if settings.list:
            name = os.path.join(os.path.dirname(path), base) if base is not None else path
            _list(fd, name, int(st.st_mtime), settings, label=path)
        elif settings.test or settings.stdout:
            _decompress_to_stdout_or_test(fd, path, settings)
        else:
            _decompress_to_file(fd, st, path, base, settings)
    finally:
        os.close(fd)


def _decompress_to_file(fd: int, st: os.stat_result, path: str, base: str, settings: Settings) -> None:
    from octoray.jobs.gzip import FormatError

    mtime_ns = None
    if settings.restore():
        header = _peek_header(fd)
        if header is not None and header.name and _header_basename(header.name):
            base = _header_basename(header.name)
        if header is not None and header.mtime:
            mtime_ns = header.mtime * 1_000_000_000
    out_path = _truncate_name(os.path.join(os.path.dirname(path), base), settings)
    try:
        result = _to_file(settings, path, out_path, st, lambda write: _run_decompression(
            fd, write, settings, lambda: _verbose_prefix(settings, path)), mtime_ns=mtime_ns)
    except FormatError as failure:
        format_error(settings, path, failure)
        return
    if result is not None:
        totals, warn = result
        if _report_decompression(settings, path, totals, warn) and settings.verbose:
            verb = "created" if settings.keep else "replaced with"
            message(f"{_decompression_ratio(totals)} -- {verb} {out_path}")


def _peek_header(fd: int):
    """The first member's header, read without moving the file offset (for -N)."""
    from octoray.formats import gzip as gz

    try:
        return gz.parse_header(os.pread(fd, 1 << 16, 0))
    except (gz.NotGzip, gz.Truncated, gz.UnknownMethod, OSError):
        return None


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


def _may_overwrite(settings: Settings, out_path: str) -> bool:
    """gzip's rule for an existing output: -f, else ask on a terminal, else warn (status 2)."""
    if not os.path.lexists(out_path) or settings.force:
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
    warning(settings, "\tnot overwritten", quiet_hides=False)
    return False


def _temporary_name(name: str) -> str:
    """A hidden name beside the output that fits NAME_MAX (255 bytes) even when the output's
    name nearly fills it: ".NAME.fgzipPID", NAME cut to 200 bytes."""
    return f".{os.fsdecode(os.fsencode(name)[:200])}.fgzip{os.getpid()}"


def _to_file(settings: Settings, in_path: str, out_path: str, st: os.stat_result, work,
             mtime_ns: int | None = None, before=None):
    """Write `work`'s output to a temporary file beside `out_path`, then rename it into place
    and remove the input; nothing is overwritten or removed before the output is complete."""
    global _partial_output
    from octoray.formats.gzip import ZipTooLarge
    from octoray.streams import write_all

    if not _may_overwrite(settings, out_path):
        return None
    if os.path.isdir(out_path) and not os.path.islink(out_path):  # -f onto a directory ("..")
        error(settings, f"{PROGRAM}: {out_path}: {os.strerror(errno.EISDIR)}")
        return None
    directory = os.path.dirname(out_path) or "."
    temporary = os.path.join(directory, _temporary_name(os.path.basename(out_path)))
    _partial_output = temporary  # before it exists: a signal between the two still removes it
    try:
        fd_out = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as failure:
        _partial_output = None
        error(settings, f"{PROGRAM}: {out_path}: {failure.strerror}")
        return None
    if before is not None:
        before()
    try:
        try:
            result = work(lambda data: write_all(fd_out, data))
            if settings.synchronous:
                os.fsync(fd_out)
            os.fchmod(fd_out, stat.S_IMODE(st.st_mode) & 0o777)
            try:
                os.fchown(fd_out, st.st_uid, st.st_gid)
            except OSError:
                pass
        finally:
            os.close(fd_out)
        os.utime(temporary, ns=(st.st_atime_ns, st.st_mtime_ns if mtime_ns is None else mtime_ns))
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
        if isinstance(failure, ZipTooLarge):
            error(settings, f"{PROGRAM}: {in_path}: {failure}")
            return None
        raise
    if not settings.keep:
        try:
            os.unlink(in_path)
        except OSError as failure:
            error(settings, f"{PROGRAM}: {in_path}: {failure.strerror}")
    return result


def _usage_error(failure: Exception) -> int:
    message(f"{PROGRAM}: {failure}\nTry `{PROGRAM} --help' for more information.")
    return ERROR


def run(argv: list[str], settings: Settings) -> int:
    try:
        apply_environment(settings)
        found, operands = parse(argv, OPTIONS, digits=LEVEL, stop=ACTIONS)
        action = apply_options(found, settings)
    except UsageError as failure:
        return _usage_error(failure)
    if action == "license":
        sys.stdout.write(LICENSE)
        return OK
    if action == "help":
        sys.stdout.write(HELP)
        return OK
    if action == "version":
        sys.stdout.write(f"{PROGRAM} {__version__} (octoray)\n")
        return OK
    if settings.form == "zip" and (settings.decompress or settings.test or settings.list):
        raise Fatal("decompressing zip (-K) is not supported")
    if settings.list:
        settings.lister = Lister()
    elif settings.test:
        settings.stdout = True
    for operand in operands or ["-"]:
        if operand == "-":
            process_stdin(settings)
        else:
            process_file(operand, settings)
    if settings.list and not settings.quiet and len(operands) > 1:
        settings.lister.totals(settings)
    return settings.status


class _NoCluster(Exception):
    """Stands in for ClusterError when no cluster was used (never raised)."""


def _cluster_error():
    """The exceptions a cluster or an accelerator raises, without importing Dask (or the
    kernels) when none is in use."""
    dask_executor, kernels = (sys.modules.get(f"octoray.{m}") for m in ("engine.dask_executor", "kernels"))
    return (dask_executor.ClusterError if dask_executor else _NoCluster,
            kernels.AcceleratorError if kernels else _NoCluster)


def main(argv: list[str] | None = None) -> int:
    _install_signal_handlers()
    settings = Settings()
    try:
        status = run(sys.argv[1:] if argv is None else argv, settings)
    except _cluster_error() as failure:
        message(f"{PROGRAM}: {failure}")
        status = ERROR
    except Abort:
        status = ERROR
    except Fatal as failure:
        text = str(failure)
        message(text if text.startswith("\n") else f"{PROGRAM}: {text}")
        status = ERROR
    except OSError as failure:
        where = failure.filename if failure.filename is not None else "stdout"
        message(f"{PROGRAM}: {where}: {failure.strerror or failure}")
        status = ERROR
    except Exception as failure:  # a bug, or octoray not installed here: say which, no traceback
        from octoray.cli.errors import describe

        message(describe(PROGRAM, failure))
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
