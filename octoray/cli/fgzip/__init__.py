"""fgzip: gzip's command line over octoray's parallel engine.

options (the option table, help, GZIP variable) -> main (each operand, as gzip treats it) ->
octoray.jobs; names (suffixes, long names), inputs (what gzip opens or refuses), output
(stdout, temporary files, signals), listing (-l), report (gzip's messages, exit status).
"""

from octoray.cli.fgzip.main import main

__all__ = ["main"]
