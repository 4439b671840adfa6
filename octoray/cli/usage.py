"""Run a Typer app as a Unix tool: a usage error is one line that starts with the program's
name, then where help is, and exit status 2, as GNU tools say it (`gzip: invalid option`),
instead of a framed panel that names no program when stderr is a log or a pipe."""

from __future__ import annotations

import sys
from typing import Sequence


def run_app(app, program: str, args: Sequence[str]) -> int:
    """The exit status of `app` run on `args`; help, --version and typer.Exit(N) behave as
    they do under Typer itself."""
    import typer

    # the click Typer runs on (its own copy from Typer 0.28 on): its exceptions module
    click_errors = sys.modules[typer.BadParameter.__module__]
    try:
        result = app(args=list(args), prog_name=program, standalone_mode=False)
    except getattr(click_errors, "NoArgsIsHelpError", ()) as error:  # a bare command: its help
        help_text = error.format_message()  # empty where Typer's rich help printed itself
        if help_text:
            sys.stderr.write(help_text + "\n")
        return error.exit_code
    except click_errors.ClickException as error:  # UsageError, BadParameter, NoSuchOption, ...
        sys.stderr.write(usage_error_text(program, error) + "\n")
        return error.exit_code
    except typer.Abort:  # end of input at a prompt
        return 1
    return result if isinstance(result, int) else 0


def usage_error_text(program: str, error) -> str:
    """`PROGRAM: message`, and for a usage error the line that says how to get help."""
    # Click calls a bounded integer's type "int range": `'x' is not a valid int range.`
    text = f"{program}: {error.format_message().replace('is not a valid int range.', 'is not a valid integer.')}"
    ctx = getattr(error, "ctx", None)
    if ctx is not None and ctx.help_option_names:
        text += f"\nTry '{ctx.command_path} {ctx.help_option_names[0]}' for help."
    return text
