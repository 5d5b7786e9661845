"""`segtune demo`: the main job on the bundled sample data (see the README)."""

from __future__ import annotations

import argparse
from pathlib import Path

from segtune._cli.common import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole workflow on the bundled sample data",
        description=(
            "Predict nuclei on the sample image with a bundled model, fine-tune it briefly on the "
            "sample's corrected labels, predict again, print the scores before and after, and export "
            "masks (OME-TIFF), measurements (CSV), an overlay (PNG) and the fine-tuned model. "
            "With --gui, open napari with the sample and the segtune widget instead."
        ),
    )
    parser.add_argument(
        "--out", type=Path, default=Path("segtune-demo"), help="folder for the results (default: ./segtune-demo)"
    )
    parser.add_argument("--minutes", type=float, default=1.0, help="time budget of the fine-tuning (default: 1)")
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="where to compute (default: auto)"
    )
    parser.add_argument(
        "--gui", action="store_true", help="open napari with the sample data and the widget (needs a display)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.gui:
        problem = display_problem()
        if problem:
            raise UsageError(problem)
        try:
            from segtune.demo import open_gui

            open_gui()
        except ImportError as e:
            raise UsageError(f"--gui needs napari: pip install 'napari-segtune[napari]' ({e})") from e
        return 0
    if not args.minutes > 0:
        raise UsageError(f"--minutes must be positive, got {args.minutes}")
    from segtune.demo import epoch_printer, run_demo

    run_demo(args.out, minutes=args.minutes, device=args.device, progress=epoch_printer(print))
    return 0


def display_problem(environ: dict[str, str] | None = None, platform: str | None = None) -> str | None:
    """Why napari could not open a window here, or None. On Linux a window needs an X or
    Wayland display; without one Qt aborts the whole process, so ask before starting it.
    A chosen Qt platform (QT_QPA_PLATFORM=offscreen, vnc ...) is left to Qt."""
    import os
    import sys

    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if not platform.startswith("linux") or environ.get("QT_QPA_PLATFORM"):
        return None
    if environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"):
        return None
    return (
        "--gui needs a display, and none is set (no DISPLAY or WAYLAND_DISPLAY: an SSH session, a cluster node?). "
        "Run it on the desktop, over 'ssh -X', or under a virtual display with 'xvfb-run segtune demo --gui'; "
        "'segtune demo' without --gui runs the same workflow on the command line"
    )
