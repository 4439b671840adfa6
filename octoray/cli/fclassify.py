"""fclassify: classify images with the CNV-W1A1 binarized CNN (CIFAR-10 classes).

The command line only: options, output formats, messages and the exit status.  Finding the
images and running them on the engine is octoray.jobs.classify.
"""

from __future__ import annotations

import os
import sys
import time
from enum import Enum
from typing import List, Optional

# fclassify never calls BLAS, and OpenBLAS starting a thread per core when numpy loads costs
# 60 ms of every run's start-up here (measured); a user's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer  # noqa: E402

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


class Printer:
    """Writes one result per line in the chosen format; failures go to stderr instead."""

    def __init__(self, out, class_names: list[str], output: OutputFormat, top_k: int, labels_only: bool):
        self.out, self.names, self.format = out, class_names, output
        self.top_k, self.labels_only = top_k, labels_only
        self._csv = None
        if output is OutputFormat.csv and not labels_only:
            import csv

            self._csv = csv.writer(out, lineterminator="\n")
            ranks = [f"{kind}{i}" for i in range(1, top_k + 1) for kind in ("label", "score")]
            self._csv.writerow(["path"] + ranks if top_k else ["path", "label"])

    def ranked(self, scores) -> list[tuple[str, int]]:
        """The classes by falling score; among equal scores the lower index first (as argmax)."""
        order = sorted(range(len(scores)), key=lambda c: (-int(scores[c]), c))
        return [(self.names[c], int(scores[c])) for c in order[: max(1, self.top_k)]]

    def write(self, name: str, scores, best: int) -> None:
        if self.labels_only:
            self.out.write(self.names[best] + "\n")
            return
        if not self.top_k and self.format is OutputFormat.tsv:  # the default, kept quick
            self.out.write(f"{name}\t{self.names[best]}\n")
            return
        ranked = self.ranked(scores)
        if self.format is OutputFormat.jsonl:
            import json

            record = {"path": name, "label": ranked[0][0]}
            if self.top_k:
                record["top"] = [{"label": label, "score": score} for label, score in ranked]
            self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
        elif self.format is OutputFormat.csv:
            if self.top_k:
                self._csv.writerow([name] + [v for pair in ranked for v in pair])
            else:
                self._csv.writerow([name, ranked[0][0]])
        else:
            fields = [name] + ([f"{label}\t{score}" for label, score in ranked] if self.top_k else [ranked[0][0]])
            self.out.write("\t".join(fields) + "\n")


class Progress:
    """A one-line count on stderr, only when stderr is a terminal and -q is not given."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.count = 0
        self.started = time.monotonic()
        self._shown = 0.0

    def step(self) -> None:
        self.count += 1
        if self.enabled and time.monotonic() - self._shown > 0.25:
            self._shown = time.monotonic()
            rate = self.count / max(1e-9, self._shown - self.started)
            sys.stderr.write(f"\r{PROGRAM}: {self.count:,} images, {rate:,.0f}/s")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self._shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _version(value: bool) -> None:
    if value:
        from octoray import __version__

        typer.echo(f"{PROGRAM} (octoray) {__version__}")
        raise typer.Exit()


@app.command(help="Classify images with the CNV-W1A1 binarized CNN; print PATH<TAB>LABEL lines in "
                  "input order.  PATH may be an image, a directory (walked recursively), a tar "
                  "archive, a CIFAR-10 binary batch, or - for standard input (the default).")
def classify(
    paths: Optional[List[str]] = typer.Argument(None, metavar="[PATH]...", show_default=False),
    files_from: Optional[str] = typer.Option(None, "--files-from", metavar="FILE",
                                             help="also read paths, one per line, from FILE (- for stdin)"),
    input_format: InputFormat = typer.Option(InputFormat.auto, "--input-format",
                                             help="what stdin and files hold; auto detects"),
    output: OutputFormat = typer.Option(OutputFormat.tsv, "--format", help="output format"),
    top_k: int = typer.Option(0, "--top-k", min=0, max=10, metavar="K",
                              help="also print the K best classes with their scores (fc3 popcounts, 0-512)"),
    labels_only: bool = typer.Option(False, "--labels", help="print only the label of each image"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no notes or progress on stderr"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="note skipped files; report speed and workers"),
    threads: Optional[int] = typer.Option(None, "--threads", "-p", min=1, help="threads of the embedded default"),
    batch: int = typer.Option(256, "--batch", min=1, max=65536, help="images per task"),
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
    state = _run(paths or [], files_from, input_format.value, output, top_k, labels_only, quiet, verbose,
                 threads, batch, scheduler, scheduler_file, cluster)
    raise typer.Exit(state)


def _run(paths, files_from, input_format, output, top_k, labels_only, quiet, verbose, threads, batch,
         scheduler, scheduler_file, cluster) -> int:
    from octoray.engine.cluster import open_executor
    from octoray.formats.cnv_input import CLASS_NAMES
    from octoray.jobs import classify as job

    failures = 0

    def complain(text: str) -> None:
        nonlocal failures
        failures += 1
        sys.stderr.write(f"{PROGRAM}: {text}\n")

    def note(text: str) -> None:
        if verbose and not quiet:
            sys.stderr.write(f"{PROGRAM}: {text}\n")

    printer = Printer(sys.stdout, list(CLASS_NAMES), output, top_k, labels_only)
    progress = Progress(not quiet)
    stdin = sys.stdin.buffer
    with open_executor(threads=threads, scheduler=scheduler, scheduler_file=scheduler_file,
                       cluster=cluster) as executor:
        stream = job.items(paths, files_from=files_from, input_format=input_format, batch=batch,
                           note=note, stdin=stdin)
        for result in job.classify(stream, executor, batch):
            if result.error:
                complain(f"{result.name}: {result.error}")
            else:
                printer.write(result.name, result.scores, result.best)
            progress.step()
        sys.stdout.flush()
        progress.done()
        if verbose and not quiet:
            seconds = time.monotonic() - progress.started
            where = ", ".join(sorted({f"{w['worker']} ({w['accelerator']})" for w in executor.describe()}))
            sys.stderr.write(f"{PROGRAM}: {progress.count - failures:,} images in {seconds:.2f} s "
                             f"({(progress.count - failures) / max(seconds, 1e-9):,.0f}/s) on {where}\n")
    return 1 if failures else 0


def _cluster_error():
    module = sys.modules.get("octoray.engine.dask_executor")
    return module.ClusterError if module else ()


def main(argv: list[str] | None = None) -> int:
    status = 0
    try:
        app(args=sys.argv[1:] if argv is None else argv, prog_name=PROGRAM, standalone_mode=True)
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    except KeyboardInterrupt:
        status = 130
    except BrokenPipeError:
        _silence_stdout()
        status = 0
    except Exception as failure:  # noqa: BLE001 - a message, never a traceback
        from octoray.kernels import AcceleratorError

        cluster_error = _cluster_error()
        if isinstance(failure, AcceleratorError) or (cluster_error and isinstance(failure, cluster_error)):
            sys.stderr.write(f"{PROGRAM}: {failure}\n")
        elif isinstance(failure, OSError):
            where = failure.filename if failure.filename is not None else "stdout"
            sys.stderr.write(f"{PROGRAM}: {where}: {failure.strerror or failure}\n")
        else:
            sys.stderr.write(f"{PROGRAM}: internal error: {type(failure).__name__}: {failure}\n")
        status = 1
    return _finish(status)


def _silence_stdout() -> None:
    """After the reader of stdout went away (`| head`): no second error at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def _finish(status: int) -> int:
    if "distributed" in sys.modules:
        # Dask's threads and exit handlers may still print as the interpreter ends; the
        # output is complete, so leave now (as fgzip does).
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                if stream is sys.stdout:
                    _silence_stdout()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
