"""`segtune autolabel`: binary labels from a fluorescence channel, with a report of the images dropped."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "autolabel",
        help="labels from a fluorescence channel",
        description=(
            "Make binary labels without drawing: CLAHE, local Otsu threshold, object diameter "
            "filter and hole filling on a fluorescence channel, then drop the images whose labels "
            "are least trustworthy (the lowest 25%% by foreground, and any with more foreground "
            "than background). Writes NAME_labels.tif for each image kept (each T/Z plane of a "
            "stack is one image) and autolabel_report.json/.csv saying what was dropped and why. "
            "With --export-channel, the other channel of a two-channel image is written beside "
            "the labels (NAME_cC.tif), ready for 'segtune train'."
        ),
    )
    parser.add_argument("--images", nargs="+", required=True, metavar="PATH", help="images to label")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the labels and the report")
    parser.add_argument("--channel", type=int, default=0, metavar="C", help="fluorescence channel the labels come from")
    parser.add_argument(
        "--export-channel",
        type=int,
        default=None,
        metavar="C",
        help="also write this channel (e.g. phase contrast) beside the labels, as the input to train on",
    )
    parser.add_argument(
        "--diameter",
        type=float,
        nargs=2,
        default=(5.0, 30.0),
        metavar=("MIN", "MAX"),
        help="keep objects whose equivalent diameter in pixels is in this range",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=None,
        metavar="R",
        help="radius in pixels of the local Otsu window (default: the maximum diameter)",
    )
    parser.add_argument("--clahe-block", type=int, default=127, metavar="N", help="CLAHE block size in pixels")
    parser.add_argument("--clahe-clip", type=float, default=3.0, metavar="SLOPE", help="CLAHE clip slope")
    parser.add_argument("--clahe-bins", type=int, default=256, metavar="N", help="CLAHE histogram bins")
    parser.add_argument("--no-fill-holes", action="store_true", help="leave holes inside objects")
    parser.add_argument(
        "--stretch",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="percentile contrast stretch before CLAHE, e.g. 5 98",
    )
    parser.add_argument("--no-filter", action="store_true", help="keep every image (skip the dataset filter)")
    parser.add_argument(
        "--drop-lowest",
        type=float,
        default=0.25,
        metavar="FRACTION",
        help="fraction of images with the least foreground to drop",
    )
    parser.add_argument(
        "--max-foreground",
        type=float,
        default=0.5,
        metavar="FRACTION",
        help="drop images whose foreground fraction is above this",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segtune.core.autolabel import REPORT_CSV, REPORT_JSON, AutolabelSettings, autolabel_files
    from segtune.core.progress import tqdm_progress

    settings = AutolabelSettings(
        clahe_kernel=args.clahe_block,
        clahe_clip=args.clahe_clip,
        clahe_bins=args.clahe_bins,
        otsu_radius=args.window,
        min_diameter=args.diameter[0],
        max_diameter=args.diameter[1],
        fill_holes=not args.no_fill_holes,
        stretch=tuple(args.stretch) if args.stretch else None,
    )
    with tqdm_progress("autolabel") as progress:
        report = autolabel_files(
            args.images,
            args.out,
            settings=settings,
            channel=args.channel,
            export_channel=args.export_channel,
            apply_filter=not args.no_filter,
            lowest_fraction=args.drop_lowest,
            max_foreground_fraction=args.max_foreground,
            overwrite=args.overwrite,
            progress=progress,
        )
    print(
        f"auto-labelled {len(report.planes)} image(s): kept {len(report.kept)}, "
        f"dropped {len(report.dropped)} -> {args.out}"
    )
    for plane in report.dropped:
        print(f"  dropped {plane.name}: {', '.join(plane.reasons)} (foreground {plane.foreground_fraction:.1%})")
    print(f"report: {args.out}/{REPORT_JSON}, {args.out}/{REPORT_CSV}")
    return 0
