"""`segtune pseudolabel`: a model labels unlabelled images, marking the pixels it is unsure of as ignored."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pseudolabel",
        help="pseudo-labels from a model, uncertain pixels ignored",
        description=(
            "Label unlabelled images with a trained model. Pixels whose probability is not "
            "beyond --threshold (foreground p >= T, background p <= 1 - T) get --ignore-value "
            "(255), which training then ignores: train a second model on labelled plus "
            "pseudo-labelled images with 'segtune train ... --ignore-value 255'. The value must "
            "not occur in the hand-made labels (for masks with foreground 255 use e.g. 2). "
            "Writes NAME_labels.tif (uint8) per image and pseudolabel_report.json."
        ),
    )
    parser.add_argument("--model", required=True, metavar="M", help="bundled model name or model folder")
    parser.add_argument("--images", nargs="+", required=True, metavar="PATH", help="unlabelled 2D images")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the pseudo-labels")
    parser.add_argument("--threshold", type=float, default=0.9, metavar="P", help="confidence needed")
    parser.add_argument("--ignore-value", type=int, default=255, metavar="V", help="label of uncertain pixels")
    parser.add_argument("--channel", type=int, default=None, metavar="C", help="channel of multi-channel images")
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda", "mps"),
        help="where to run the model; auto tries CUDA, then MPS, then the CPU",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segtune.core.progress import tqdm_progress
    from segtune.core.train.pseudolabel import pseudolabel_files

    with tqdm_progress("pseudolabel") as progress:
        results = pseudolabel_files(
            args.model,
            args.images,
            args.out,
            threshold=args.threshold,
            ignore_value=args.ignore_value,
            channel=args.channel,
            device=args.device,
            overwrite=args.overwrite,
            progress=progress,
        )
    confident = sum(r.confident_fraction for r in results) / len(results)
    print(
        f"pseudo-labelled {len(results)} image(s) -> {args.out}; "
        f"{confident:.1%} of pixels confident, the rest = {args.ignore_value}"
    )
    print(f"train on them with: segtune train ... --ignore-value {args.ignore_value}")
    return 0
