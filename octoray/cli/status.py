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
def status(threads: int = typer.Option(None, "--threads", "-p", help="threads of the embedded default")) -> None:
    """One line per worker: its accelerator, threads and tasks done."""
    from octoray.engine.cluster import open_executor

    with open_executor(threads=threads) as executor:
        rows = executor.describe()
    print(f"{'WORKER':<24} {'ACCELERATOR':<28} {'THREADS':>7} {'TASKS':>7}")
    for row in rows:
        print(f"{row['worker']:<24} {row['accelerator']:<28} {row['threads']:>7} {row.get('tasks', 0):>7}")


def main() -> int:
    try:
        app(prog_name="octoray")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
