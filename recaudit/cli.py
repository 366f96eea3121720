"""The ``recaudit`` command line: the top-level parser, the registry of commands and
``main``, which turns every outcome into an exit status.

Every command validates its input and turns a bad value into one line on stderr and exit
status 2 (no traceback); a crash (a bug, a broken environment) exits 4, apart from every
verdict's code, and a closed pipe on stdout (``| head``) ends quietly. Each command lives
in its own module (``*_cli.py``; what they share is in :mod:`recaudit.args`). Heavy imports
(torch, Ray, pandas) happen inside commands so that ``recaudit --help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import audit_cli, fit_cli, listing_cli, scenario_cli, simulate_cli, train_cli, ui_cli
from .args import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_STATUS_HELP,
    CliError,
    Command,
    Parser,
    non_negative_int,
    positive_int,
)

#: the commands, by name (filled by :func:`build_parser`; an entry set here beforehand wins)
COMMANDS: dict[str, Command] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="recaudit",
        description="Audit recommender policies for the preference shifts and polarization they induce.",
        epilog=EXIT_STATUS_HELP,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)

    commands: dict[str, Command] = {}
    commands.update(simulate_cli.register(sub))
    commands.update(train_cli.register(sub))
    commands.update(ui_cli.register(sub))
    audit_cli.add_parsers(sub, positive_int, non_negative_int)
    commands.update(audit=audit_cli.cmd_audit, history=audit_cli.cmd_history)
    scenario_cli.add_parsers(sub, positive_int, non_negative_int)
    commands["scenario"] = scenario_cli.cmd_scenario
    fit_cli.add_parser(sub, positive_int, non_negative_int)
    commands["fit"] = fit_cli.cmd_fit
    from service.cli import register

    commands.update(register(sub))
    from .model_cli import register as register_model

    commands.update(register_model(sub))
    commands.update(listing_cli.register(sub))
    for name, command in commands.items():
        COMMANDS.setdefault(name, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from recaudit import __version__

        print(f"recaudit {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    from pydantic import ValidationError

    from simulator.errors import SpecError

    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader gone away shows here, not at exit
        return code
    except BrokenPipeError:
        # the reader (``| head``) has what it wanted: stop quietly (Python's recipe)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (CliError, SpecError) as exc:
        print(f"recaudit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        print(f"recaudit: error: invalid {where}: {first['msg']}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("recaudit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("RECAUDIT_DEBUG"):
            raise
        print(
            f"recaudit: internal error: {type(exc).__name__}: {exc} (set RECAUDIT_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
