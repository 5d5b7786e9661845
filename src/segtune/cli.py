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
import os
import shlex
import sys
import warnings
from collections.abc import Sequence

from segtune import __version__
from segtune._cli.common import UsageError

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


def _is_usage_error(error: BaseException) -> bool:
    """Whether ``error`` is one a one-line message explains (exit code 2).

    ``segtune.core.io`` (and with it dask) is not imported just to name its error class: if the
    module was never loaded, nothing can have raised its ``ImageReadError``, and ``--help`` or
    ``segtune models`` stay fast.
    """
    if isinstance(error, (UsageError, OSError, ValueError, MemoryError)):
        return True
    io = sys.modules.get("segtune.core.io")
    return io is not None and isinstance(error, io.ImageReadError)


def main(argv: Sequence[str] | None = None) -> int:
    from segtune.core.progress import Cancelled

    # PyTorch's OpenMP threads spin while they wait for each other; where the cores are busy
    # with other work a spinning thread keeps the core its partner needs, and a forward pass of
    # the bundled nuclei model took 1.7 s instead of 0.3 s (2 cores, load average 14). Waiting
    # passively costs microseconds per layer. Read once, when torch loads: that is after here.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
    except Cancelled:
        print(f"segtune {args.command}: cancelled; what was already written is intact", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"segtune {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not _is_usage_error(e):
            raise
        if args.verbose:
            logging.getLogger("segtune").exception("failed")
        print(f"segtune {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2


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
    sys.exit(main())
