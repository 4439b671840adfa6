"""Jobs on the engine: what a tool asks for (compress, decompress, classify), in chunks.

The defaults both a job and its command line need live here, where importing costs nothing.
"""

DEFAULT_BLOCK_SIZE = 1 << 20
"""fgzip's chunk: 1 MiB (larger chunks unbalance two threads, smaller ones cost ratio)."""

DEFAULT_BATCH = 256
"""fclassify's images per task."""
