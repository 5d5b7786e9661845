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
import warnings
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
    "clean",
    "export_bioimageio",
    "info",
    "demo",
)


class UsageError(Exception):
    """A problem with the user's input that a one-line message explains (exit code 2)."""


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
        with warnings.catch_warnings():
            if not args.verbose:  # a warning is one line in our words, not Python's source-line form
                warnings.showwarning = _one_line_warning(args.command)
            return int(args.func(args) or 0)
    except (ImageReadError, UsageError, OSError, ValueError, MemoryError) as e:
        if args.verbose:
            logging.getLogger("segtune").exception("failed")
        print(f"segtune {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Cancelled:
        print(f"segtune {args.command}: cancelled; what was already written is intact", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"segtune {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line_warning(command: str):
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        if issubclass(category, RuntimeWarning) and ("invalid value" in text or "divide by zero" in text):
            text = f"a computation met NaN or infinite values ({text})"
        print(f"segtune {command}: warning: {text}", file=file or sys.stderr)

    return show


def _one_line(error: BaseException) -> str:
    """The message of ``error`` on one line, in words (an OSError's errno and repr left out)."""
    from segtune.core.files import OutputError

    if isinstance(error, OSError) and not isinstance(error, OutputError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        message = f"{where}{error.strerror[:1].lower()}{error.strerror[1:]}"
    elif isinstance(error, MemoryError):
        message = f"not enough memory ({error}); try a smaller --tile, --patch or --batch-size"
    else:
        message = str(error)
    return " ".join(message.split())


if __name__ == "__main__":
    # `python -m segtune.cli`: run the imported module's main, so that the subcommands'
    # `from segtune.cli import UsageError` is the class main() catches (not __main__'s twin)
    from segtune.cli import main as imported_main

    sys.exit(imported_main())
