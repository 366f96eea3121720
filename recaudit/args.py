"""What the ``recaudit`` commands share: exit codes, the parser class that turns a bad
argument into exit status 2, argument types, the Ray flags and their one default, the
``--out`` check and JSON output without NaN.

Light on purpose: ``recaudit --help`` imports it (heavy imports happen inside commands).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 4  # a crash; apart from the verdicts' 0 pass, 1 flag, 3 inconclusive
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a reader that went away
EXIT_STATUS_HELP = (
    "exit status: 0 success (audit: pass), 1 audit flag, 3 audit inconclusive, "
    "2 bad input (one line on stderr), 4 internal error, 130 interrupted"
)

#: a command: parsed arguments -> exit status
Command = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A problem with the user's input; printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def int_arg(
    what: str, low: int, high: int | None = None, too_low: str = ""
) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high], with a readable error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = too_low if value < low and too_low else f"must be in {low}..{high}"
            raise argparse.ArgumentTypeError(f"{bound}, got {value}")
        return value

    return parse


positive_int = int_arg("a positive integer", 1, too_low="must be positive")
non_negative_int = int_arg("a non-negative integer", 0, too_low="must be non-negative")
port = int_arg("a port number", 1, 65535)


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


# ------------------------------------------------------------------------------ Ray
RAY_DEFAULT = (
    "Where the work runs is chosen by the work unless a flag names it: a cluster when "
    "RAY_ADDRESS is set, in this process for small work with at most one learner to "
    "train, embedded Ray for large work or when two or more learners must be trained; "
    "the numbers are the same on every backend."
)


def add_ray_flags(parser: argparse.ArgumentParser, tasks: str) -> None:
    """The same three flags, with the same default, for every command that runs work on
    Ray (simulate, train, audit); ``tasks`` names what runs (e.g. 'seed')."""
    parser.add_argument(
        "--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else chosen by the work)"
    )
    parser.add_argument(
        "--in-process", action="store_true", help=f"run every {tasks} in this process (no Ray)"
    )
    parser.add_argument("--ray", action="store_true", help=f"run every {tasks} on embedded Ray")


def requested_backend(args: argparse.Namespace) -> str | None:
    """What the Ray flags ask for: None (in process), ``"local"`` (embedded Ray), a
    cluster address, or ``auditor.executor.AUTO`` (chosen by the work: see
    :class:`auditor.executor.BackendChoice`)."""
    from auditor.executor import AUTO, resolve_ray_address

    if sum(map(bool, (args.in_process, args.ray_address, args.ray))) > 1:
        raise CliError("--in-process, --ray and --ray-address exclude each other")
    if args.in_process:
        return None
    return resolve_ray_address(args.ray, args.ray_address) or AUTO


# ------------------------------------------------------------------------- output
def prepare_out_dir(out: Path, marker: str) -> None:
    """Create ``--out`` now, before any work, so that a directory that cannot be made or
    written is bad input found in a second, not after the whole run."""
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a directory")
    if (out / marker).exists():
        raise CliError(f"--out {out} already holds results; choose another directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--out {out}: cannot create it: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise CliError(f"--out {out}: not writable")


def clean(obj: Any) -> Any:
    """JSON has no NaN: write null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clean(v) for v in obj]
    return obj
