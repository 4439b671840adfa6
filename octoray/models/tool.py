"""What the training tools' command lines (train, teacher, average, export, binarize_cost)
share; without PyTorch, since export reads integer models without it."""

from __future__ import annotations

import functools
import sys


def reports_file_errors(prog: str):
    """Decorate a training tool's main: a file it cannot read or write (the archive, a portable
    file, a checkpoint) ends it with one line on stderr and exit status 1, not a traceback."""
    def decorate(main):
        @functools.wraps(main)
        def run(argv=None) -> int:
            try:
                return main(argv)
            except OSError as error:
                where = f"{error.filename}: " if error.filename else ""
                print(f"{prog}: {where}{error.strerror or error}", file=sys.stderr)
                return 1
        return run
    return decorate
