"""`octoray`: look at where the work would run (`octoray status`)."""

from __future__ import annotations

import sys

import typer

from octoray import __version__
from octoray.cli.errors import SIGPIPE_STATUS, ReaderGone, failure_text, leave, reported, silence_stdout
from octoray.cli.usage import run_app

PROGRAM = "octoray"

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="octoray: data-parallel jobs on a cluster of accelerators.")


def _print_version(value: bool) -> None:
    if value:
        print(f"{PROGRAM} {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", callback=_print_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """octoray: data-parallel jobs on a cluster of accelerators."""


@app.command(short_help="One line per worker: its accelerator, threads and tasks done.")
def status(
    scheduler: str = typer.Option(None, "--scheduler", help="Dask scheduler address (tcp://, tls://)"),
    scheduler_file: str = typer.Option(None, "--scheduler-file", help="file written by `dask scheduler`"),
    threads: int = typer.Option(None, "--threads", "-p", min=1, help="threads of the embedded default"),
) -> None:
    """One line per worker: its accelerator, threads and tasks done.  A cluster without
    workers is an error (exit 1): nothing could run there."""
    from octoray.engine.cluster import open_executor

    try:
        with open_executor(threads=threads, scheduler=scheduler, scheduler_file=scheduler_file,
                           workers_timeout=0) as executor:
            rows = executor.describe()
    except Exception as error:  # ClusterError and friends: a message, not a traceback
        typer.echo(failure_text(PROGRAM, error, unnamed=None), err=True)
        raise typer.Exit(1)
    try:
        print(f"{'WORKER':<24} {'ACCELERATOR':<40} {'THREADS':>7} {'TASKS':>7}")
        for row in rows:
            print(f"{row['worker']:<24} {row['accelerator']:<40} {row['threads']:>7} {row.get('tasks', 0):>7}")
        sys.stdout.flush()
    except BrokenPipeError:  # before Click turns it into a silent status 1
        raise ReaderGone() from None


def main() -> int:
    status = 0
    try:
        status = run_app(app, PROGRAM, sys.argv[1:])
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    except ReaderGone:
        silence_stdout()
        status = SIGPIPE_STATUS
    except OSError as failure:  # writing stdout (a full disk): one line, not a traceback
        sys.stderr.write(reported(PROGRAM, failure) + "\n")
        status = 1
    return leave(status)


if __name__ == "__main__":
    sys.exit(main())
