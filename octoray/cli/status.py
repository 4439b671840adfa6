"""`octoray`: look at where the work would run (`octoray status`)."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="octoray: data-parallel jobs on a cluster of accelerators.")


@app.callback()
def _root() -> None:
    """octoray: data-parallel jobs on a cluster of accelerators."""


@app.command()
def status(
    scheduler: str = typer.Option(None, "--scheduler", help="Dask scheduler address (tcp://, tls://)"),
    scheduler_file: str = typer.Option(None, "--scheduler-file", help="file written by `dask scheduler`"),
    threads: int = typer.Option(None, "--threads", "-p", help="threads of the embedded default"),
) -> None:
    """One line per worker: its accelerator, threads and tasks done."""
    from octoray.engine.cluster import open_executor

    try:
        with open_executor(threads=threads, scheduler=scheduler, scheduler_file=scheduler_file) as executor:
            rows = executor.describe()
    except Exception as error:  # ClusterError and friends: a message, not a traceback
        typer.echo(f"octoray: {error}", err=True)
        raise typer.Exit(1)
    print(f"{'WORKER':<24} {'ACCELERATOR':<40} {'THREADS':>7} {'TASKS':>7}")
    for row in rows:
        print(f"{row['worker']:<24} {row['accelerator']:<40} {row['threads']:>7} {row.get('tasks', 0):>7}")


def main() -> int:
    try:
        app(prog_name="octoray")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
