"""`segtune demo`: the main job on the bundled sample data (see the README)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the whole workflow on the bundled sample data")
    parser.add_argument("--out", type=Path, default=Path("segtune-demo"), help="folder for the results (default: ./segtune-demo)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segtune.demo import run_demo

    run_demo(args.out)
    return 0
