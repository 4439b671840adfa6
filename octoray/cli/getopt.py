"""GNU getopt_long parsing, as gzip does it, with gzip's error messages.

Bundled short options (``-9kc``), attached or separate arguments (``-Sz``, ``-S z``,
``--suffix=z``, ``--suffix z``), unambiguous long prefixes (``--dec``), options after
operands, and ``--``.  Python's own getopt differs in its messages and in ambiguity rules.
"""

from __future__ import annotations


class Option:
    """`extra`: a long name gzip does not have; an abbreviation matches such names only when it
    matches none of gzip's own (``--h`` stays --help, ``--no-`` stays --no-name)."""

    __slots__ = ("key", "short", "long", "takes_argument", "extra")

    def __init__(self, key: str, short: str = "", long: tuple[str, ...] = (), takes_argument: bool = False,
                 extra: bool = False):
        self.key, self.short, self.long, self.takes_argument = key, short, long, takes_argument
        self.extra = extra


class UsageError(Exception):
    """A command-line error; the message is gzip's, without the program name."""


def parse(argv: list[str], options: list[Option], digits: str | None = None, stop: tuple[str, ...] = ()
          ) -> tuple[list[tuple[str, str | None, str]], list[str]]:
    """Return ([(key, argument, spelling)], operands) in command-line order.

    With `digits`, a run of digits in a bundle is one option of that key with the run as its
    argument (``-11`` is pigz's level 11, where getopt would see ``-1 -1``).  An option whose
    key is in `stop` ends the parse at once (gzip acts on -h and -V where it meets them, so
    ``gzip -h -j`` helps rather than complains)."""
    by_short = {o.short: o for o in options if o.short}
    by_long = {name: o for o in options for name in o.long}
    found: list[tuple[str, str | None, str]] = []
    operands: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            operands.extend(argv[i:])
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            option, spelled = _match_long(name, by_long)
            if option.takes_argument:
                if not eq:
                    if i >= len(argv):
                        raise UsageError(f"option '--{spelled}' requires an argument")
                    value = argv[i]
                    i += 1
                found.append((option.key, value, "--" + spelled))
            else:
                if eq:
                    raise UsageError(f"option '--{spelled}' doesn't allow an argument")
                found.append((option.key, None, "--" + spelled))
            if option.key in stop:
                return found, operands
        elif arg.startswith("-") and arg != "-":
            j = 1
            while j < len(arg):
                char = arg[j]
                j += 1
                if digits and char.isdigit():
                    run = char
                    while j < len(arg) and arg[j].isdigit():
                        run += arg[j]
                        j += 1
                    found.append((digits, run, "-" + run))
                    continue
                option = by_short.get(char)
                if option is None:
                    raise UsageError(f"invalid option -- '{char}'")
                if option.takes_argument:
                    if j < len(arg):
                        value = arg[j:]
                    elif i < len(argv):
                        value = argv[i]
                        i += 1
                    else:
                        raise UsageError(f"option requires an argument -- '{char}'")
                    found.append((option.key, value, "-" + char))
                    break
                found.append((option.key, None, "-" + char))
                if option.key in stop:
                    return found, operands
        else:
            operands.append(arg)
    return found, operands


def _match_long(name: str, by_long: dict[str, Option]) -> tuple[Option, str]:
    if name in by_long:
        return by_long[name], name
    candidates = [n for n in by_long if n.startswith(name)] if name else []
    own = [n for n in candidates if not by_long[n].extra]
    candidates = own or candidates
    if not candidates:
        raise UsageError(f"unrecognized option '--{name}'")
    if len({by_long[n].key for n in candidates}) > 1:
        listed = " ".join(f"'--{n}'" for n in candidates)
        raise UsageError(f"option '--{name}' is ambiguous; possibilities: {listed}")
    return by_long[candidates[0]], candidates[0]
