"""The engine's own faults.  The tools print their messages as they are (octoray.cli.errors),
so each is written for the user; this module imports nothing, so workers, file ranges and the
client's requests can all raise them without importing one another."""

from __future__ import annotations


class ClusterError(RuntimeError):
    """The cluster could not be reached, or was lost, or has no workers to run on."""
