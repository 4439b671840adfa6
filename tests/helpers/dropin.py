"""Helpers for the drop-in tests: run GNU gzip (or pigz) and fgzip the same way in two fresh
copies of a directory and compare what a user sees.  Compressed bytes may differ (another
compressor), so .gz outputs are compared by their decompressed content."""

from __future__ import annotations

import gzip as pygzip
import os
import stat
import subprocess

from conftest import assert_no_traceback, run, tool

GZIP_ENV = {k: v for k, v in os.environ.items() if k not in ("GZIP", "PIGZ")}
GZIP_ENV["TZ"] = "UTC"


def state(where) -> list[tuple]:
    """Every path under `where` with its mode, its mtime and its content (decompressed for
    gzip files), so that files left behind, modes and times are compared."""
    found = []
    for root, dirs, files in os.walk(where):
        for name in sorted(dirs + files):
            path = os.path.join(root, name)
            st = os.lstat(path)
            content = None
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as handle:
                    content = handle.read()
                if content[:2] == b"\x1f\x8b":
                    try:
                        content = ("gunzipped", pygzip.decompress(content))
                    except Exception:  # noqa: BLE001 - a damaged file is compared as bytes
                        pass
            mtime = st.st_mtime_ns if stat.S_ISREG(st.st_mode) else None
            found.append((os.path.relpath(path, where), oct(st.st_mode), mtime, content))
    return sorted(found, key=lambda entry: entry[0])


def run_in_copies(tmp_path, args, setup, *, input=None, env=None, reference="gzip", stdin=None):
    """[(result, directory)] for the reference tool and fgzip, each run with `args` in its own
    fresh copy of a directory that `setup` fills."""
    environment = dict(GZIP_ENV, **(env or {}))
    outcomes = []
    for name in (reference, "fgzip"):
        where = tmp_path / name
        where.mkdir()
        setup(where)
        argv = [*tool("fgzip")] if name == "fgzip" else [name]
        kw = {"stdin": stdin if stdin is not None else subprocess.DEVNULL} if input is None else {"input": input}
        result = run(argv + [str(a) for a in args], cwd=where, env=environment, timeout=60, **kw)
        outcomes.append((result, where))
    assert_no_traceback(outcomes[1][0])
    return outcomes


def both(tmp_path, args, setup, **kw):
    """[(result, state)] for the reference tool and fgzip, each run in its own copy."""
    return [(result, state(where)) for result, where in run_in_copies(tmp_path, args, setup, **kw)]


def swapped(stderr: bytes, reference: str = "gzip") -> bytes:
    return stderr.replace(b"fgzip", reference.encode())


def assert_same(tmp_path, args, setup, *, stdout="same", ratios=True, **kw):
    """Exit status, stderr (program name swapped), stdout and the files left behind agree.
    stdout="gunzip" compares it decompressed; ratios=False masks the -v percentages, which
    depend on the compressor."""
    (theirs, their_state), (ours, our_state) = both(tmp_path, args, setup, **kw)
    reference = kw.get("reference", "gzip")
    expected, got = theirs.stderr, swapped(ours.stderr, reference)
    if not ratios:
        import re

        expected, got = (re.sub(rb"-?\d+\.\d%", b"R%", text) for text in (expected, got))
    assert ours.returncode == theirs.returncode, (ours.stderr, theirs.stderr)
    assert got == expected, (got, expected)
    if stdout == "same":
        assert ours.stdout == theirs.stdout
    elif stdout == "gunzip":
        assert pygzip.decompress(ours.stdout) == pygzip.decompress(theirs.stdout)
    assert our_state == their_state
    return ours, theirs


FIXED_TIME = 1_200_000_000


def put(where, name: str, data: bytes, mode: int = 0o644, mtime: int = FIXED_TIME):
    """A file with a fixed mtime, so that both copies compare equal."""
    path = where / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    os.utime(path, (mtime, mtime))
    return path


def gz_bytes(data: bytes, name: bytes | None = None, mtime: int = 0) -> bytes:
    """A member as gzip writes it, made by the real gzip (-n: no name) or by Python with a name."""
    if name is None:
        return run(["gzip", "-cn"], input=data, check=True).stdout
    import io

    out = io.BytesIO()
    with pygzip.GzipFile(filename=name.decode(), mode="wb", fileobj=out, mtime=mtime) as writer:
        writer.write(data)
    return out.getvalue()
