"""fgzip's run: each operand compressed, decompressed, tested or listed as gzip does, the work
itself done by octoray.jobs (which never sees an option)."""

from __future__ import annotations

import errno
import os
import stat
import sys

from octoray.cli.errors import leave, reported
from octoray.cli.stdio import names_as_their_bytes, readable
from octoray.cli.fgzip import names, output
from octoray.cli.fgzip.inputs import file_time, open_input, stdin_mtime
from octoray.cli.fgzip.listing import Lister, decompression_ratio, list_stream
from octoray.cli.fgzip.options import ACTIONS, HELP, LEVEL, LICENSE, OPTIONS, VERSION, Options, apply_environment, \
    apply_options
from octoray.cli.fgzip.report import ERROR, OK, PROGRAM, Abort, Fatal, Run, display_ratio, extra_note, message, \
    on_a_new_line, usage_error
from octoray.cli.getopt import UsageError, parse
from octoray.formats import faults


def _executor(run: Run):
    if run.executor is None:
        from octoray.engine.cluster import open_executor

        options = run.options
        decoding = options.decompress or options.test or options.list  # host work: no card decodes
        run.executor = open_executor(threads=options.processes, scheduler=options.scheduler,
                                     scheduler_file=options.scheduler_file, cluster=options.cluster,
                                     accelerators=not decoding)
    return run.executor


def _compression(fd_in: int, write, run: Run, label: str, name: bytes | None, mtime: int | None,
                 mode: int = 0o644, seekable: bool = False):
    from octoray.jobs.gzip import Wrapper, compress_stream

    options = run.options
    mtime = _header_time(run, label, mtime)
    if options.form == "zip":
        name = os.fsencode(options.alias) if name is None and options.alias else name
    elif not options.save_name():
        name = None
    wrapper = Wrapper(options.form, name=name, mtime=mtime, level=options.level,
                      comment=options.comment, mode=mode)
    st = os.fstat(fd_in)
    try:
        totals = compress_stream(fd_in, write, _executor(run), level=options.level, block_size=options.block_size,
                                 strategy=options.strategy,
                                 rsyncable=options.rsyncable, wrapper=wrapper, index=seekable)
    except Exception as failure:
        file_ranges = sys.modules.get("octoray.engine.file_ranges")  # loaded where workers read files
        if file_ranges is not None and isinstance(failure, file_ranges.FileChanged) and label != "stdin":
            raise Fatal(f"{label}: {failure.reason}") from None  # the name as given, as gzip's messages
        raise
    if stat.S_ISREG(st.st_mode) and totals.bytes_in != st.st_size:  # gzip's note (a /proc file, a growing log)
        message(f"{PROGRAM}: {label}: file size changed while zipping")
    return totals


def _header_time(run: Run, label: str, mtime: int | None) -> int:
    """The MTIME to store: 0 under -n and for a pipe or a device; gzip warns (status 2) when a
    file's time does not fit its 32 bits or is 0, which the format reserves for "none"."""
    if mtime is None or not run.options.save_time():
        return 0
    if 0 < mtime <= 0xFFFFFFFF:
        return mtime
    if run.options.form == "gzip":
        run.warning(f"{PROGRAM}: {label}: warning: file timestamp out of range for gzip format")
    return 0


def _decompression(fd_in: int, write, run: Run, label: str, on_header=None, stdin: bool = False):
    from octoray.jobs.gunzip import decompress_stream

    options = run.options
    # gzip -cdf (and -tf, and -df reading stdin, whose output is stdout): not gzip is copied
    passthrough = options.force and (options.stdout or stdin) and not options.list
    return decompress_stream(fd_in, write, passthrough=passthrough, on_header=on_header,
                             on_extra=extra_note(run, label), executor=lambda: _executor(run))


def _cluster_note(run: Run, label: str = "stdin") -> None:
    """-v on a cluster: how the data reached the workers (read by them, or sent), naming a
    file as it was given (the engine knows its absolute path)."""
    note = getattr(run.executor, "note", None)
    if run.options.verbose and note:
        subject = getattr(run.executor, "note_subject", None)
        if subject and label != "stdin":
            note = note.replace(subject, label, 1)
        message(f"{PROGRAM}: {note}")
        run.executor.note = None


def _verbose_prefix(run: Run, path: str) -> None:
    if run.options.verbose:
        message(f"{path}:\t", end="")


def _compressed_ratio(totals) -> str:
    return display_ratio(totals.bytes_in - (totals.bytes_out - totals.overhead), totals.bytes_in)


def process_stdin(run: Run) -> None:
    from octoray.streams import enlarge_pipe

    options = run.options
    fd = sys.stdin.fileno()
    if not readable(fd):  # the caller closed it: a stand-in stands there (octoray.cli.stdio)
        raise Fatal(f"standard input: {os.strerror(errno.EBADF)}")
    compressing = not (options.decompress or options.test or options.list)
    if not options.force and not options.list:  # gzip -l reads a terminal
        if compressing and os.isatty(sys.stdout.fileno()):
            raise Fatal("compressed data not written to a terminal. Use -f to force compression.\n"
                        f"For help, type: {PROGRAM} -h")
        if not compressing and os.isatty(fd):
            raise Fatal("compressed data not read from a terminal. Use -f to force decompression.\n"
                        f"For help, type: {PROGRAM} -h")
    enlarge_pipe(fd)
    if options.list:
        list_stream(fd, "stdout", stdin_mtime(fd), run)
    elif compressing:
        totals = _compress_to_stdout(fd, run, "stdin", None, file_time(os.fstat(fd)))
        if totals is not None and options.verbose:
            message(_compressed_ratio(totals))
            _cluster_note(run)
    else:
        _decompress_to_stdout_or_test(fd, "stdin", run)


def _compress_to_stdout(fd: int, run: Run, label: str, name: bytes | None, mtime: int | None, mode: int = 0o644):
    from octoray.formats.gzip import ZipTooLarge

    try:
        return output.to_stdout(lambda write, seekable: _compression(fd, write, run, label, name, mtime, mode,
                                                                     seekable))
    except ZipTooLarge as failure:
        raise Fatal(str(failure)) from None


def _decompress_to_stdout_or_test(fd: int, label: str, run: Run) -> None:
    """-dc or -t: decompress `fd` to stdout (or nowhere) and report as gzip does."""
    options = run.options
    prefix = None if label == "stdin" else (lambda: _verbose_prefix(run, label))
    try:
        if options.test:
            totals, outcome = _decompression(fd, output.discard, run, label, prefix, label == "stdin")
        else:
            totals, outcome = output.to_stdout(
                lambda write, _seekable: _decompression(fd, write, run, label, prefix, label == "stdin"))
    except faults.Fault as failure:
        run.fault(label, failure)
        return
    if not run.outcome(label, outcome, totals):
        return
    trailing = isinstance(outcome, (faults.TrailingGarbage, faults.TrailingZeros))
    if options.verbose and not (label == "stdin" and trailing):  # gzip: no " OK" after stdin's trailing data
        if options.test:
            message(" OK")
        elif label != "stdin":  # gzip -dv reports nothing for stdin
            verb = "created" if options.keep else "replaced with"
            message(f"{decompression_ratio(totals)} -- {verb} stdout")


def process_file(path: str, run: Run) -> None:
    if run.options.decompress or run.options.test or run.options.list:
        _decompress_file(path, run)
    else:
        _compress_file(path, run)


def _walk(path: str, run: Run) -> None:
    """-r: every entry in readdir's order, as gzip walks (os.listdir keeps that order)."""
    try:
        entries = os.listdir(path)
    except OSError as failure:
        run.error(f"{PROGRAM}: {path}: {failure.strerror}")
        return
    for entry in entries:
        process_file(path + entry if path.endswith("/") else f"{path}/{entry}", run)


def _compress_file(path: str, run: Run) -> None:
    options = run.options
    opened = open_input(path, run, lambda directory: _walk(directory, run))
    if opened is None:
        return
    fd, st = opened
    try:
        suffix = names.has_suffix(os.path.basename(path), options.suffix)
        if suffix and not options.force and not options.stdout:
            if options.verbose or not (options.recursive or options.quiet):
                message(f"{PROGRAM}: {path} already has {suffix} suffix -- unchanged")
            return
        name = os.fsencode(os.path.basename(path))
        mtime, mode = file_time(st), stat.S_IMODE(st.st_mode)
        if options.stdout:
            _verbose_prefix(run, path)
            done = _compress_to_stdout(fd, run, path, name, mtime, mode)
            out_path = "stdout"
        else:
            out_path = names.shorten_for_suffix(path, names.compress_suffix(options), run)
            if out_path is None:
                return
            done = output.to_file(run, path, out_path, st,
                                  lambda write, seekable: _compression(fd, write, run, path, name, mtime, mode,
                                                                       seekable),
                                  before=lambda: _verbose_prefix(run, path))
        if done is not None and options.verbose:
            verb = "created" if options.keep else "replaced with"
            message(f"{_compressed_ratio(done)} -- {verb} {out_path}")
            _cluster_note(run, path)
    finally:
        os.close(fd)


def _decompress_file(path: str, run: Run) -> None:
    options = run.options
    path = names.find_compressed(path, run)
    opened = open_input(path, run, lambda directory: _walk(directory, run))
    if opened is None:
        return
    fd, st = opened
    try:
        base = names.strip_suffix(os.path.basename(path), options.suffix)
        # gzip -dc never looks at the suffix; -t and -l try any file, except under -r
        checked = options.test or options.list or not options.stdout
        if base is None and checked and (options.recursive or not (options.test or options.list)):
            if options.verbose or not (options.recursive or options.quiet):
                run.warning(f"{PROGRAM}: {path}: unknown suffix -- ignored")
            return
        if options.list:
            listed = names.strip_suffix(os.path.basename(path), options.suffix, pigz=False)  # gzip's name
            name = os.path.join(os.path.dirname(path), listed) if listed is not None else path
            list_stream(fd, name, int(st.st_mtime), run, label=path)
        elif options.test or options.stdout:
            _decompress_to_stdout_or_test(fd, path, run)
        else:
            _decompress_to_file(fd, st, path, base, run)
    finally:
        os.close(fd)


def _decompress_to_file(fd: int, st: os.stat_result, path: str, base: str, run: Run) -> None:
    from octoray.jobs.gunzip import first_header_fault

    options = run.options
    failure = first_header_fault(fd)  # before the output's name is looked at, as gzip does
    if failure is not None:
        run.fault(path, failure)
        return
    mtime_ns = None
    if options.restore():
        header = _peek_header(fd)
        if header is not None and header.name and names.header_basename(header.name):
            base = names.header_basename(header.name)
        mtime_ns = _restored_mtime_ns
    out_path = names.truncate_name(os.path.join(os.path.dirname(path), base), run)
    try:
        result = output.to_file(run, path, out_path, st, lambda write, _seekable: _keeping_a_zip_of_more_entries(
            _decompression(fd, write, run, path, lambda: _verbose_prefix(run, path))), mtime_ns=mtime_ns)
    except faults.Fault as failure:
        run.fault(path, failure)
        return
    if result is not None:
        totals, outcome = result
        if run.outcome(path, outcome, totals) and options.verbose:
            verb = "created" if options.keep else "replaced with"
            message(f"{decompression_ratio(totals)} -- {verb} {out_path}")


def _restored_mtime_ns(result) -> int | None:
    """-N's time: the last member's MTIME that is not 0 (gzip reads each member's header into
    the same time stamp), else None: the input's own."""
    totals, _outcome = result
    return totals.mtime * 1_000_000_000 if totals.mtime else None


def _keeping_a_zip_of_more_entries(result):
    """gzip -d refuses to replace a zip of several entries (its output is removed)."""
    totals, outcome = result
    if isinstance(outcome, faults.MoreEntries):
        failure = faults.MoreEntriesUnchanged()
        failure.totals = totals
        raise failure
    return result


def _peek_header(fd: int):
    """The first member's header, read without moving the file offset (for -N)."""
    from octoray.formats import gzip as gz

    try:
        return gz.parse_header(os.pread(fd, 1 << 16, 0))
    except (faults.Fault, gz.Truncated, OSError):
        return None


def execute(argv: list[str], run: Run) -> int:
    """Parse `argv` into run.options, then process every operand; the exit status."""
    options = run.options
    try:
        apply_environment(options)
        found, operands = parse(argv, OPTIONS, digits=LEVEL, stop=ACTIONS)
        action = apply_options(found, options)
    except UsageError as failure:
        return usage_error(failure)
    if action is not None:
        sys.stdout.write({"license": LICENSE, "help": HELP, "version": VERSION + "\n"}[action])
        return OK
    if options.list:
        run.lister = Lister()
    for operand in operands or ["-"]:
        if operand == "-":
            process_stdin(run)
        else:
            process_file(operand, run)
    if options.list and not options.quiet and len(operands) > 1:
        run.lister.totals(run)
    return run.status


def main(argv: list[str] | None = None) -> int:
    output.install_signal_handlers()
    names_as_their_bytes()
    run = Run(Options())
    try:
        status = execute(sys.argv[1:] if argv is None else argv, run)
    except Abort:
        status = ERROR
    except Fatal as failure:
        text = str(failure)
        message(text if text.startswith("\n") else on_a_new_line(f"{PROGRAM}: {text}"))
        status = ERROR
    except Exception as failure:  # the engine's faults, system errors, and bugs: never a traceback
        message(on_a_new_line(reported(PROGRAM, failure)))
        status = ERROR
    finally:
        if run.executor is not None:
            run.executor.close()
    return leave(status)
