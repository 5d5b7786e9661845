"""`segtune measure`: per-object measurements (physical units, per-channel intensities) to CSV."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "measure",
        help="per-object measurements to CSV",
        description=(
            "Measure every object of a label image: centroid, area or volume and equivalent "
            "diameter in micrometres (in pixels where the file has no pixel sizes), bounding box, "
            "and mean/max/integrated intensity of each channel of --image. Stacks are measured "
            "per time point, as 3D objects unless --per-plane."
        ),
    )
    parser.add_argument("--labels", required=True, metavar="PATH", help="label image (instance labels or a binary mask)")
    parser.add_argument(
        "--image", metavar="PATH", default=None,
        help="the image the labels belong to: intensities and pixel sizes come from it "
        "(without it, pixel sizes come from the label file and there are no intensities)",
    )
    parser.add_argument("--out", required=True, metavar="TABLE.csv", help="table to write (.csv or .tsv)")
    parser.add_argument("--per-plane", action="store_true", help="measure each Z plane as 2D objects")
    parser.add_argument("--scene", default=None, help="scene (CZI) or series (TIFF) of --image, by index or name")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segtune.cli import UsageError
    from segtune.core.io import open_image, read_labels
    from segtune.core.measure import measure, save_table

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    labels = read_labels(args.labels)
    reference = open_image(args.labels)
    intensities = None
    channel_names = None
    if args.image is not None:
        scene = int(args.scene) if args.scene is not None and args.scene.isdigit() else args.scene
        reference = open_image(args.image, scene=scene)
        intensities = reference.data
        channel_names = reference.channel_names
    sizes = reference.sizes()
    full = (sizes["T"], sizes["Z"], sizes["Y"], sizes["X"])
    squeezed = tuple(s for s in full if s != 1)
    if labels.shape not in (full, squeezed):
        raise ValueError(
            f"labels {args.labels} have shape {labels.shape} but the image {args.image or args.labels} has "
            f"T={full[0]}, Z={full[1]}, Y={full[2]}, X={full[3]}"
        )
    axes = ("T" if full[0] > 1 else "") + ("Z" if full[1] > 1 else "") + "YX"
    labels = labels.reshape(tuple(s for a, s in zip("TZYX", full, strict=True) if a in axes))
    if intensities is not None:
        # TCZYX -> the layout measure() expects: C where it sits in TCZYX, singleton T/Z dropped
        if full[1] == 1:
            intensities = intensities[:, :, 0]
        if full[0] == 1:
            intensities = intensities[0]
    try:
        table = measure(
            labels,
            intensities,
            pixel_sizes=reference.physical_pixel_sizes,
            channel_names=channel_names,
            per_plane=args.per_plane,
            axes=axes,
        )
    except ValueError as e:  # what is wrong with the labels: say which file they came from
        raise UsageError(f"{args.labels}: {e}") from e
    save_table(table, out, overwrite=args.overwrite)
    unit = table["unit"].iloc[0] if len(table) else "px"
    print(f"measured {len(table)} object(s) in {'micrometres' if unit == 'um' else 'pixels'} -> {out}")
    return 0
