"""octoray: data-parallel jobs on a cluster of accelerators, from an ordinary shell pipeline."""

__version__ = "0.1.0"
