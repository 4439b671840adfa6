"""File names as gzip makes and reads them: compressed suffixes, names too long for their
directory, the name stored in a header, and the hidden temporary name of a partial output."""

from __future__ import annotations

import errno
import os

from octoray.cli.fgzip.report import PROGRAM, Run, message

KNOWN_SUFFIXES = (".gz", ".z", ".taz", ".tgz", "-gz", "-z", "_z")  # in the order gzip tries them
PIGZ_SUFFIXES = (".zz", "-zz", ".zip", ".ZIP")
"""Suffixes pigz -d takes off (letter case as written) that gzip does not know: zlib and zip.
fgzip takes them off when decompressing only, so `fgzip a.zz` still compresses to a.zz.gz."""


def has_suffix(name: str, suffix: str) -> str | None:
    """The compressed suffix `name` ends with, spelled as in `name`, as gzip finds it: the -S
    suffix, then gzip's own, the first that matches in any letter case and leaves at least one
    character before it; an -S suffix that ends one of gzip's own (as written: "z" does, "Z"
    does not) is tried after them (`-S z` takes "i.z" to "i", `-S Z` takes "x.gz" to "x.g")."""
    ends_a_known_one = any(len(suffix) < len(known) and known.endswith(suffix) for known in KNOWN_SUFFIXES)
    order = (*KNOWN_SUFFIXES, suffix) if ends_a_known_one else (suffix, *KNOWN_SUFFIXES)
    lower = name.lower()
    for candidate in order:
        size = len(candidate)
        if len(name) > size and lower.endswith(candidate.lower()) and name[-size - 1] != "/":
            return name[len(name) - size:]
    return None


def decompress_suffix(name: str, suffix: str) -> str | None:
    """The suffix decompressing `name` takes off: gzip's (has_suffix), else pigz's own."""
    found = has_suffix(name, suffix)
    if found is None:
        found = next((c for c in PIGZ_SUFFIXES if len(name) > len(c) and name.endswith(c)), None)
    return found


def strip_suffix(name: str, suffix: str, pigz: bool = True) -> str | None:
    """The output name for decompressing `name`, or None if it has no compressed suffix
    (without `pigz`, gzip's suffixes only: gzip -l names a zip NAME.zip)."""
    found = decompress_suffix(name, suffix) if pigz else has_suffix(name, suffix)
    if found is None:
        return None
    base = name[: -len(found)]
    return base + ".tar" if found.lower() in (".tgz", ".taz") else base


def compress_suffix(options) -> str:
    """-S's suffix if given, else the form's own (pigz: .zz for -z, .zip for -K)."""
    if options.suffix_set:
        return options.suffix
    return {"zlib": ".zz", "zip": ".zip"}.get(options.form, options.suffix)


def find_compressed(path: str, run: Run) -> str:
    """gzip -d NAME also finds NAME.gz (and its other suffixes, then pigz's) when NAME is
    missing."""
    following = run.options.force or run.options.stdout or run.options.test or run.options.list
    try:
        (os.stat if following else os.lstat)(path)
        return path
    except OSError as failure:
        if failure.errno != errno.ENOENT:  # "a.gz/" is "Not a directory", under its own name
            return path
    if decompress_suffix(os.path.basename(path), run.options.suffix):
        return path
    candidates = (run.options.suffix, ".gz", ".z", "-z", ".Z", *PIGZ_SUFFIXES)  # gzip's, then pigz's
    for candidate in candidates:
        if os.path.lexists(path + candidate):
            return path + candidate
    return path + run.options.suffix  # named in the error, as gzip does


def name_max(directory: str) -> int:
    try:
        return os.pathconf(directory or ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def shorten_for_suffix(path: str, suffix: str, run: Run) -> str | None:
    """PATH+SUFFIX, or, where that name is too long for the directory, gzip's shorter one: a
    byte off the end of the last dot-separated part longer than 3 bytes (else 2, else 1), again
    until the name fits, with gzip's "NAME compressed to SHORTER" note."""
    directory, name = os.path.split(path)
    limit, stem, tail = name_max(directory), os.fsencode(name), os.fsencode(suffix)
    if len(stem) + len(tail) <= limit:
        return path + suffix
    while len(stem) + len(tail) > limit:
        parts = stem.split(b".")
        for shortest in (3, 2, 1):
            longer = [i for i, part in enumerate(parts) if len(part) > shortest]
            if longer:
                parts[longer[-1]] = parts[longer[-1]][:-1]
                break
        else:
            run.error(f"{PROGRAM}: {path}{suffix}: {os.strerror(errno.ENAMETOOLONG)}")
            return None
        stem = b".".join(parts)
    out_path = os.path.join(directory, os.fsdecode(stem + tail))
    if not (run.options.quiet or run.options.verbose):
        message(f"{PROGRAM}: {path} compressed to {out_path}")
    return out_path


def truncate_name(path: str, run: Run) -> str:
    """-N with a stored name too long for the directory: cut from its end, as gzip warns."""
    directory, name = os.path.split(path)
    limit, raw = name_max(directory), os.fsencode(name)
    if len(raw) <= limit:
        return path
    path = os.path.join(directory, os.fsdecode(raw[:limit]))
    run.warning(f"{PROGRAM}: {path}: warning, name truncated")
    return path


def header_basename(name: bytes) -> str:
    return os.fsdecode(name).rsplit("/", 1)[-1]


def temporary_name(name: str) -> str:
    """A hidden name beside the output that fits NAME_MAX (255 bytes) even when the output's
    name nearly fills it: ".NAME.fgzipPID", NAME cut to 200 bytes."""
    return f".{os.fsdecode(os.fsencode(name)[:200])}.fgzip{os.getpid()}"


