"""`segtune demo`: the main job on the bundled sample data (see the README)."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    parser.add_argument("--out", type=Path, default=Path("segtune-demo"), help="folder for the results (default: ./segtune-demo)")
    parser.add_argument("--minutes", type=float, default=1.0, help="time budget of the fine-tuning (default: 1)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="where to compute (default: auto)")
    parser.add_argument("--gui", action="store_true", help="open napari with the sample data and the widget (needs a display)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from segtune.cli import UsageError

    # PyTorch's OpenMP threads otherwise spin while idle; on a machine whose cores are also busy
    # with other work that made training steps 5-7x slower here (set before torch is imported)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    if args.gui:
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
