"""fclassify: classify images with the CNV-W1A1 binarized CNN (CIFAR-10 classes).

The command line only: options, output formats, messages and the exit status.  Finding the
images is octoray.jobs.classify_inputs, running them on the engine octoray.jobs.classify.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from enum import Enum
from typing import List, Optional

# fclassify never calls BLAS, and OpenBLAS starting a thread per core when numpy loads costs
# 60 ms of every run's start-up here (measured); a user's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer  # noqa: E402

from octoray.cli.errors import SIGPIPE_STATUS, ReaderGone, leave, reported, silence_stdout  # noqa: E402
from octoray.cli.stdio import names_as_their_bytes  # noqa: E402
from octoray.cli.usage import run_app  # noqa: E402
from octoray.formats.cnv_views import DEFAULT_VIEWS, MAX_VIEWS  # noqa: E402
from octoray.jobs import DEFAULT_BATCH  # noqa: E402

PROGRAM = "fclassify"


class OutputFormat(str, Enum):
    tsv = "tsv"
    csv = "csv"
    jsonl = "jsonl"


class InputFormat(str, Enum):
    auto = "auto"
    image = "image"
    tar = "tar"
    cifar = "cifar"


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})


def _version(value: bool) -> None:
    if value:
        from octoray import __version__

        typer.echo(f"{PROGRAM} {__version__} (octoray)")
        raise typer.Exit()


@app.command(help="Classify images with the CNV-W1A1 binarized CNN; print PATH<TAB>LABEL lines in "
                  "input order.  PATH may be an image, a directory (walked recursively), a tar "
                  "archive, a CIFAR-10 binary batch, or - for standard input (the default when it "
                  "is not a terminal).  In TSV a backslash, tab, newline or return in a name is "
                  "written \\\\, \\t, \\n, \\r.")
def classify(
    paths: Optional[List[str]] = typer.Argument(None, metavar="[PATH]...", show_default=False),
    files_from: Optional[List[str]] = typer.Option(None, "--files-from", metavar="FILE",
                                                   help="also read paths, one per line, from FILE (- for "
                                                        "stdin); may be given more than once"),
    null: bool = typer.Option(False, "--null", "-0", help="--files-from's paths end with NUL, not newline "
                                                          "(find -print0)"),
    input_format: InputFormat = typer.Option(InputFormat.auto, "--input-format",
                                             help="what stdin and the files named hold; auto detects (a "
                                                  "directory's files are images, or CIFAR-10 batches *.bin)"),
    output: OutputFormat = typer.Option(OutputFormat.tsv, "--format", help="output format"),
    top_k: int = typer.Option(0, "--top-k", min=0, max=10, metavar="K",
                              help="also print the K best classes with their scores (fc3 popcounts "
                                   "summed over the views: 0-512 a view)"),
    views: int = typer.Option(DEFAULT_VIEWS, "--views", min=1, max=MAX_VIEWS, metavar="N",
                              help="classify N views of each image and sum their scores: the image, "
                                   "its mirror, then the image moved a pixel down, up, right, left, "
                                   "each with its mirror (1: fastest; each view costs a pass)"),
    labels_only: bool = typer.Option(False, "--labels", help="print only the label of each image "
                                                             "(takes no --top-k or --format)"),
    zero: bool = typer.Option(False, "--zero", "-z", help="end each result with NUL, not newline, "
                                                          "and write names unescaped"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no notes or progress on stderr"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="note skipped files; report speed and workers"),
    threads: Optional[int] = typer.Option(None, "--threads", "-p", min=1, help="threads of the embedded default"),
    batch: int = typer.Option(DEFAULT_BATCH, "--batch", min=1, max=65536, help="images per task"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", metavar="ADDR", help="Dask scheduler address"),
    scheduler_file: Optional[str] = typer.Option(None, "--scheduler-file", metavar="FILE",
                                                 help="scheduler file written by `dask scheduler`"),
    cluster: Optional[str] = typer.Option(None, "--cluster", metavar="local",
                                          help="`local`: start an in-process Dask LocalCluster"),
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="show the version and exit"),
) -> None:
    if cluster not in (None, "local"):
        raise typer.BadParameter(f"unknown cluster {cluster!r} (only 'local')", param_hint="--cluster")
    if labels_only and top_k:
        raise typer.BadParameter("--labels prints only the best label, so it takes no --top-k",
                                 param_hint="--top-k")
    if labels_only and output is not OutputFormat.tsv:
        raise typer.BadParameter("--labels prints bare labels, one a line, so it takes no "
                                 f"--format {output.value}", param_hint="--format")
    if null and not files_from:
        raise typer.BadParameter("--null says how --files-from's paths end, and there is no --files-from",
                                 param_hint="--null")
    reads_stdin = "-" in (paths or []) or (not paths and not files_from)
    if reads_stdin and _stdin_is_terminal():
        raise typer.BadParameter("images are not read from a terminal: name files "
                                 "or directories, or pipe images in", param_hint="PATH")
    try:
        state = _run(paths or [], files_from, null, input_format.value, output.value, top_k, labels_only, zero,
                     quiet, verbose, threads, batch, views, scheduler, scheduler_file, cluster)
    except BrokenPipeError:  # before Click turns it into a silent status 1
        raise ReaderGone() from None
    raise typer.Exit(state)



def _stdin_is_terminal() -> bool:
    try:
        return os.isatty(sys.stdin.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def _run(paths, files_from, null, input_format, output, top_k, labels_only, zero, quiet, verbose, threads,
         batch, views, scheduler, scheduler_file, cluster) -> int:
    from octoray.cli.fclassify_output import Printer, Screen, per_second, shown
    from octoray.engine.cluster import open_executor
    from octoray.formats.cnv_input import CLASS_NAMES
    from octoray.jobs.classify import classify as classified
    from octoray.jobs.classify_inputs import items

    screen = Screen(progress=not quiet)
    failures = 0

    def note(name: str, text: str) -> None:
        if verbose and not quiet:
            screen.message(f"{shown(name)}: {text}")

    printer = Printer(screen.out, list(CLASS_NAMES), output, top_k, labels_only, zero)
    try:
        with open_executor(threads=threads, scheduler=scheduler, scheduler_file=scheduler_file,
                           cluster=cluster) as executor:
            stream = items(paths, files_from=files_from, null=null, input_format=input_format,
                           batch=batch, note=note, stdin=sys.stdin.buffer)
            for result in classified(stream, executor, batch, views, popcounts=top_k > 0):
                if result.error:
                    failures += 1
                    screen.message(f"{shown(result.name)}: {result.error}")
                else:
                    printer.write(result.name, result.scores, result.best)
                screen.step(result.batch_end)
            screen.close()
            if verbose and not quiet and not executor.in_process:  # how the images reached the workers
                sent = "the images' data is sent to the workers"
                sys.stderr.write(f"{PROGRAM}: {getattr(executor, 'note', None) or sent}\n")
            if verbose and not quiet:
                seconds = time.monotonic() - screen.started
                done = screen.count - failures
                where = ", ".join(sorted({f"{w['worker']} ({w['accelerator']})" for w in executor.describe()}))
                failed = f", {failures:,} failed" if failures else ""
                passes = f", {views} views an image" if views > 1 else ""
                sys.stderr.write(f"{PROGRAM}: {done:,} image{'' if done == 1 else 's'} in {seconds:.2f} s "
                                 f"({per_second(done, seconds)}/s{passes}) on {where}{failed}\n")
    finally:
        screen.close()
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    # Libraries' warnings (Pillow's decompression-bomb warning, ...) are not for the user:
    # fclassify says what matters itself, as `fclassify: PATH: ...`.
    warnings.simplefilter("ignore")
    names_as_their_bytes()
    status = 0
    try:
        status = run_app(app, PROGRAM, sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    except KeyboardInterrupt:
        status = 130
    except (BrokenPipeError, ReaderGone):
        silence_stdout()
        status = SIGPIPE_STATUS
    except Exception as failure:  # noqa: BLE001 - the engine's faults, system errors, bugs: a message
        sys.stderr.write(reported(PROGRAM, failure) + "\n")
        status = 1
    return leave(status)


if __name__ == "__main__":
    sys.exit(main())
