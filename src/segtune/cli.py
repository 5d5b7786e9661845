"""The ``segtune`` command: a thin argparse front over ``segtune.core``.

Each subcommand lives in ``segtune._cli.<name>`` and provides ``register(subparsers)``, which
adds its parser and sets ``func`` (taking the parsed arguments, returning an exit code).
Errors a user can fix (a file that cannot be read, an output that exists) print one line and
exit with code 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys
from collections.abc import Sequence

from segtune import __version__

# Order is the order `segtune --help` lists them in.
COMMANDS = (
    "models",
    "predict",
    "train",
    "evaluate",
    "pretrain",
    "autolabel",
    "pseudolabel",
    "measure",
    "info",
    "demo",
)


class UsageError(Exception):
    """A problem with the user's input that a one-line message explains (exit code 2)."""


class HelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help where the default says something and the help
    does not already: not for flags, not for None (the help says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or default in (None, False, argparse.SUPPRESS)
            or isinstance(action, (argparse._StoreConstAction, argparse._VersionAction, argparse._HelpAction))
            or "default" in text.lower()
        ):
            return text
        shown = " ".join(str(v) for v in default) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segtune",
        description="Segment microscopy images with U-Nets: predict, fine-tune, evaluate, export.",
    )
    parser.add_argument("--version", action="version", version=f"segtune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is being done")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"segtune._cli.{name}").register(subparsers)
    for subparser in subparsers.choices.values():
        subparser.formatter_class = HelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from segtune.core.io import ImageReadError
    from segtune.core.progress import Cancelled

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    # what was run, recorded in model provenance (sys.argv is the caller's when called from Python)
    args.command_line = shlex.join(["segtune", *argv])
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ImageReadError, UsageError, FileExistsError, FileNotFoundError, ValueError) as e:
        if args.verbose:
            logging.getLogger("segtune").exception("failed")
        print(f"segtune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Cancelled:
        print(f"segtune {args.command}: cancelled; what was already written is intact", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"segtune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
