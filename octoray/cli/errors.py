"""The one-line message for a failure that is not the user's input, shared by the three tools.

A module that cannot be imported almost always means octoray runs in a Python it was not
installed in (`python3 bin/fgzip` outside the virtual environment), or the launchers in
bin/ run a checkout whose C extensions were never built (a non-editable install builds them
elsewhere).  Both get a message that says what to do instead of "internal error".
Standard library only: this module must import wherever the launchers run.
"""

from __future__ import annotations

import os
import sys

INSTALL_HINT = ("use the environment it is installed in (. .venv/bin/activate), or install it here: "
                "python3 -m pip install .  — or pip install -e . to run the launchers in bin/")
EXTENSIONS = ("octoray/kernels/_cnv_native", "octoray/formats/_deflate_blocks")


def missing_module(error: ImportError) -> str:
    """The module that could not be imported: `isal`, or `octoray.kernels._cnv_native` for
    "cannot import name '_cnv_native' from 'octoray.kernels'"."""
    text = str(error)
    if text.startswith("cannot import name '") and error.name:
        return f"{error.name}.{text.split(chr(39))[1]}"
    return error.name or text


def import_failure(program: str, error: ImportError) -> str:
    module = missing_module(error)
    if module.startswith("octoray.") and module.rsplit(".", 1)[-1].startswith("_"):
        return _unbuilt(program, module, _checkout_of_octoray())
    return (f"{program}: cannot import {module}: octoray is not installed in this Python "
            f"({sys.executable}): {INSTALL_HINT}")


def describe(program: str, failure: BaseException) -> str:
    """The message for an exception that reached a tool's top level unexplained."""
    if isinstance(failure, ImportError):
        return import_failure(program, failure)
    return f"{program}: internal error: {type(failure).__name__}: {failure}"


def unbuilt_extension(checkout: str) -> str | None:
    """The first C extension that a checkout lacks (dotted name), or None when all are built.
    The launchers in bin/ ask before running a checkout instead of an installed octoray."""
    import _imp

    suffixes = _imp.extension_suffixes()
    for stem in EXTENSIONS:
        base = os.path.join(checkout, *stem.split("/"))
        if not any(os.path.exists(base + suffix) for suffix in suffixes):
            return stem.replace("/", ".")
    return None


def check_checkout(program: str, checkout: str) -> None:
    """Exit with the install hint when the checkout the launcher runs is not built."""
    missing = unbuilt_extension(checkout)
    if missing:
        sys.stderr.write(_unbuilt(program, missing, checkout) + "\n")
        sys.exit(1)


def _unbuilt(program: str, module: str, checkout: str) -> str:
    return (f"{program}: cannot import {module}: octoray's C extensions are not built in {checkout} "
            f"(pip install -e . builds them there)")


def _checkout_of_octoray() -> str:
    where = getattr(sys.modules.get("octoray"), "__file__", None)
    return os.path.dirname(os.path.dirname(where)) if where else "this checkout"
