"""Peak resident memory of one tool process, measured by a small Python process that starts
it: a process started straight from pytest would count pytest's own memory at the fork
(Linux's maxrss)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading

_STARTER = ("import resource, subprocess, sys; status = subprocess.call(sys.argv[2:]); "
            "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
            "sys.exit(status)")


def measured(argv, *, feed=None, input: bytes | None = None):
    """Run argv; (exit code, stdout, stderr, peak RSS in bytes) of that one process.
    `feed`: an iterable of chunks written to its stdin pipe until it stops reading;
    `input`: bytes for its stdin."""
    with tempfile.TemporaryDirectory() as scratch:
        peak_file = os.path.join(scratch, "peak")
        piped = feed is not None or input is not None
        process = subprocess.Popen([sys.executable, "-c", _STARTER, peak_file, *map(str, argv)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   stdin=subprocess.PIPE if piped else subprocess.DEVNULL)
        writer = None
        if feed is not None:
            pipe, process.stdin = process.stdin, None  # the writer's to close, not communicate's

            def write():
                try:
                    for chunk in feed:
                        pipe.write(chunk)
                    pipe.close()
                except (BrokenPipeError, ValueError):
                    pass

            writer = threading.Thread(target=write, daemon=True)
            writer.start()
        out, err = process.communicate(input, timeout=120)
        if writer:
            writer.join(10)
        with open(peak_file) as peak:
            return process.returncode, out, err, int(peak.read()) * 1024  # KiB on Linux
