"""fgzip's options: gzip's and pigz's option table, the help, the GZIP variable, and what the
options asked for (Options), checked as gzip checks them."""

from __future__ import annotations

import os

from octoray import __version__
from octoray.cli.fgzip.report import PROGRAM, Fatal, message
from octoray.cli.getopt import Option, UsageError, parse
from octoray.jobs import DEFAULT_BLOCK_SIZE

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
  -R, --rsyncable   make rsync-friendly archive (chunks cut where the content says)
  -S, --suffix=SUF  use suffix SUF on compressed files
  -Y, --synchronous synchronous output (safer if system crashes, but slower)
  -t, --test        test compressed file integrity
  -v, --verbose     verbose mode
  -V, --version     display version number
  -1, --fast        compress faster
  -9, --best        compress better

pigz options:
  -0                  store without compression;  -11: strongest (libdeflate 12)
  -p, --processes=N   use N threads on the embedded default (default: CPUs)
  -b, --blocksize=KIB chunk size in KiB (default 1024, 32 to 524288)
  -i, --independent   compress chunks independently (fgzip always does)
  -m, -T, --no-time   do not store the modification time
  -M, --time          store the modification time (the default)
  -C, --comment=TEXT  put TEXT in the gzip header as a comment
  -H, --huffman       Huffman coding only;  -U, --rle: run-length coding only
  -z, --zlib          write zlib (.zz) instead of gzip
  -K, --zip           write a one-entry PKZip (.zip) instead of gzip
  -A, --alias=NAME    the zip entry's name when reading standard input
  -F, -I N, -J N, -O  pigz's zopfli tuning: accepted and ignored

Cluster (default: DASK_SCHEDULER_ADDRESS or Dask's config, else this process):
      --scheduler=ADDR       run on the Dask scheduler at ADDR (tcp://, tls://)
      --scheduler-file=FILE  run on the scheduler that `dask scheduler` wrote to FILE
      --cluster=local        start an in-process Dask LocalCluster

With no FILE, or when FILE is -, read standard input.
"""


LICENSE = f"""{PROGRAM} {__version__} (octoray)
This is free software under the MIT license: you may change and redistribute it.
There is NO WARRANTY, to the extent permitted by law.
"""


VERSION = f"{PROGRAM} {__version__} (octoray)"


class Options:
    """What the options asked for; set while parsing, then only read."""

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
        self.block_size = DEFAULT_BLOCK_SIZE
        self.independent = self.synchronous = False
        self.form = "gzip"  # pigz's -z (zlib) and -K (zip)
        self.alias: str | None = None
        self.comment: bytes | None = None
        self.strategy: str | None = None  # pigz's -H (huffman) and -U (rle)
        self.scheduler = self.scheduler_file = self.cluster = None

    def save_name(self) -> bool:
        return self.name_flag is not False

    def save_time(self) -> bool:
        return self.time_flag is not False

    def restore(self) -> bool:
        """-N when decompressing: take the name and time from the header."""
        return self.name_flag is True


ACTIONS = ("help", "version", "license")


def apply_options(found, options: Options) -> str | None:
    """Fold parsed options into `options`; returns 'help', 'version' or 'license' when one was
    asked for.  As in gzip, such an option acts where it stands (the parse stops there) and
    the values are checked only once every option is read (``-S '' -S .x`` is fine)."""
    checks: list = []
    for key, value, _spelled in found:
        if key in ACTIONS:
            return key
        _apply(key, value, options, checks)
    for check in checks:
        check()
    if not options.suffix:
        raise Fatal("invalid suffix ''")
    if options.test and not options.list:
        options.stdout = True  # gzip -t writes nowhere, as -c would, and keeps the input
    return None


_FLAGS = {"stdout": "stdout", "force": "force", "keep": "keep", "independent": "independent",
          "decompress": "decompress", "test": "test", "list": "list", "recursive": "recursive",
          "rsyncable": "rsyncable", "synchronous": "synchronous"}
_SETTINGS = {"no-name": {"name_flag": False, "time_flag": False}, "name": {"name_flag": True, "time_flag": True},
             "no-time": {"time_flag": False}, "time": {"time_flag": True},
             "fast": {"level": 1}, "best": {"level": 9},
             # -z and -K set their suffix as pigz does: the last of -S, -z and -K names the output
             "zlib": {"form": "zlib", "suffix_set": False}, "zip": {"form": "zip", "suffix_set": False},
             "huffman": {"strategy": "huffman"}, "rle": {"strategy": "rle"},
             "quiet": {"quiet": True, "verbose": 0}}


def _level(digits: str) -> int:
    """A run of digits as a level: pigz's -0 and -11, else gzip's reading, digit by digit, the
    last winning (-19 is -9); a 0 among other digits is gzip's invalid option, which pigz
    refuses too (-10 would otherwise store the data uncompressed)."""
    if digits in ("0", "11"):
        return int(digits)
    if "0" in digits:
        raise UsageError("invalid option -- '0'")
    return int(digits[-1])


def _apply(key: str, value: str | None, options: Options, checks: list) -> None:
    """Set what `key` asks for; checks of a value wait in `checks` (gzip checks after its loop)."""
    if key in _FLAGS:
        setattr(options, _FLAGS[key], True)
    elif key in _SETTINGS:
        for name, setting in _SETTINGS[key].items():
            setattr(options, name, setting)
    elif key == LEVEL:
        options.level = _level(value)
    elif key == "verbose":
        options.verbose += 1
        options.quiet = False
    elif key == "suffix":  # gzip takes any suffix but '' (checked at the end), even one with a '/'
        options.suffix, options.suffix_set = value, True
    elif key == "processes":
        checks.append(lambda: _set_processes(options, value))
    elif key == "blocksize":
        checks.append(lambda: _set_block_size(options, value))
    elif key == "comment":
        options.comment = os.fsencode(value)
    elif key == "alias":
        options.alias = value
    elif key in ("scheduler", "scheduler-file"):
        if not value:
            checks.append(lambda: _raise(Fatal(f"--{key} needs a value, not ''")))
        setattr(options, key.replace("-", "_"), value)
    elif key == "cluster":
        if value != "local":
            checks.append(lambda: _raise(Fatal(f"--cluster takes 'local', not '{value}'")))
        options.cluster = value
    elif key == "ascii":
        # gzip warns after reading every option: a -q anywhere (not undone by a later -v) hushes it
        checks.insert(0, lambda: options.quiet or message(f"{PROGRAM}: option --ascii ignored on this system"))
    elif key == "lzw":
        raise UsageError("-Z not supported in this version")
    elif key == "zopfli" and value is not None and not (value.isascii() and value.isdigit()):
        checks.append(lambda: _raise(Fatal(f"invalid numeric parameter: {value}")))  # pigz's -I and -J
    # "bits": gzip accepts and ignores its hidden LZW option; "zopfli": pigz's -F -I -J -O tune
    # zopfli, which fgzip's -11 (libdeflate) does not use


def _raise(failure: Exception):
    raise failure


MAX_BLOCK_KIB = 512 * 1024  # pigz 2.6 refuses more than 512 MiB a block
MAX_PROCESSES = (1 << 30) - 1  # and more threads than this


def _set_processes(options: Options, value: str) -> None:
    threads = _positive_int(value, f"invalid number of processes: {value}")
    if threads > MAX_PROCESSES:
        raise Fatal(f"too many processes: {value}")
    options.processes = threads


def _set_block_size(options: Options, value: str) -> None:
    kib = _positive_int(value, f"invalid block size: {value}")
    if kib < 32:
        raise Fatal("block size too small (must be >= 32K)")
    if kib > MAX_BLOCK_KIB:
        raise Fatal(f"block size too large: {value}")
    options.block_size = kib * 1024


def _positive_int(text: str, complaint: str) -> int:
    try:
        number = int(text, 10)
    except ValueError:
        raise Fatal(complaint) from None
    if number < 1:
        raise Fatal(complaint)
    return number


def apply_environment(options: Options) -> None:
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
        _apply(key, value, options, [])
    if not options.quiet:
        message(f"{PROGRAM}: warning: GZIP environment variable is deprecated; use an alias or script")


# --- partial outputs are removed when a signal ends the run -------------------------------

