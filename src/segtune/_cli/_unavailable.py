"""Subcommands that exist in the command's contract but are not built yet fail clearly."""

from __future__ import annotations

import argparse


def register_unavailable(subparsers: argparse._SubParsersAction, name: str, help: str, issue: str) -> None:
    parser = subparsers.add_parser(name, help=f"{help} (not available yet)", add_help=True)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def run(args: argparse.Namespace) -> int:
        from segtune.cli import UsageError

        raise UsageError(f"'segtune {name}' is not available yet in this version ({issue})")

    parser.set_defaults(func=run)
