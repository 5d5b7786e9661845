"""`segtune measure`: per-object measurements (physical units, per-channel intensities) to CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from segtune._cli.common import UsageError, scene_arg


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
    parser.add_argument(
        "--labels", required=True, metavar="PATH", help="label image (instance labels or a binary mask)"
    )
    parser.add_argument(
        "--image",
        metavar="PATH",
        default=None,
        help="the image the labels belong to: intensities and pixel sizes come from it "
        "(without it, pixel sizes come from the label file and there are no intensities)",
    )
    parser.add_argument("--out", required=True, metavar="TABLE.csv", help="table to write (.csv or .tsv)")
    parser.add_argument("--per-plane", action="store_true", help="measure each Z plane as 2D objects")
    parser.add_argument(
        "--label-bit",
        type=int,
        default=None,
        metavar="K",
        help="--labels is a multilabel mask (class flags): measure the objects of class K (bit K)",
    )
    parser.add_argument(
        "--pair-with",
        default=None,
        metavar="PATH",
        help="partner objects (e.g. Golgi for nuclei): each object gets at most one partner, by nearest "
        "centroids (one to one), and the table gains partner, vector_z/y/x and pair_distance",
    )
    parser.add_argument(
        "--pair-bit", type=int, default=None, metavar="K", help="--pair-with is a multilabel mask: pair with class K"
    )
    parser.add_argument(
        "--max-distance",
        type=float,
        default=None,
        metavar="D",
        help="longest centroid distance of a pair (micrometres, or pixels without pixel sizes)",
    )
    parser.add_argument("--scene", default=None, help="scene (CZI) or series (TIFF) of --image, by index or name")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segtune.core.io import open_image, read_labels
    from segtune.core.measure import measure, save_table

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    labels = _class_objects(read_labels(args.labels), args.label_bit)
    reference = open_image(args.labels)
    intensities = None
    channel_names = None
    if args.image is not None:
        scene = scene_arg(args.scene)
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
    pairs_note = ""
    if args.pair_with is not None:
        from segtune.core.measure import pair_objects

        if "T" in axes or args.per_plane:
            raise ValueError("--pair-with pairs objects of one 2D image or 3D stack (no time axis, no --per-plane)")
        partners = _class_objects(read_labels(args.pair_with), args.pair_bit).reshape(labels.shape)
        if (
            table["label"].size
            and table["label"].max() > 0
            and not np.array_equal(np.unique(labels[labels > 0]), table["label"].to_numpy())
        ):
            labels = _renumbered(labels)  # a binary mask: measure() numbered its components
        pairs = pair_objects(labels, partners, reference.physical_pixel_sizes, max_distance=args.max_distance)
        table = table.merge(pairs, on="label", how="left")
        pairs_note = f", {int((table['partner'] > 0).sum())} paired with an object of {args.pair_with}"
    save_table(table, out, overwrite=args.overwrite)
    unit = table["unit"].iloc[0] if len(table) else "px"
    print(f"measured {len(table)} object(s) in {'micrometres' if unit == 'um' else 'pixels'}{pairs_note} -> {out}")
    return 0


def _class_objects(labels, bit: int | None):
    """The objects of class ``bit`` of a multilabel mask (or ``labels`` unchanged when ``bit`` is None)."""
    if bit is None:
        return labels
    from segtune.core.measure import class_instances

    if not 0 <= bit < 32:
        raise ValueError(f"a class bit must be between 0 and 31, got {bit}")
    return class_instances(labels, bit + 1)[bit]


def _renumbered(labels):
    from segtune.core.metrics import connected_components

    return connected_components(labels > 0)[0]
