"""`segtune clean`: the Correct tab's cleanup operations on label files, for a whole batch."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from segtune._cli.common import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "clean",
        help="clean up label images (holes, specks, border objects, merged objects)",
        description=(
            "Clean instance label images (a binary mask is first numbered by connected components) "
            "and write each as DIR/NAME.tif with the input's pixel sizes. The steps run in this "
            "order, each only when asked: remove border objects, fill holes, split merged objects, "
            "smooth, dilate, erode, remove small objects, renumber 1..n. A stack is cleaned as one "
            "volume unless --planewise."
        ),
    )
    parser.add_argument("--labels", nargs="+", required=True, metavar="PATH", help="label images to clean")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the cleaned label images")
    parser.add_argument("--remove-border", action="store_true", help="remove objects touching the image edge")
    parser.add_argument(
        "--split", action="store_true", help="split objects at the peaks of their distance to the background"
    )
    parser.add_argument(
        "--split-distance",
        type=float,
        default=None,
        metavar="PX",
        help="smallest distance between two split peaks in pixels (default: half each object's inscribed radius)",
    )
    parser.add_argument("--fill-holes", action="store_true", help="fill holes inside objects")
    parser.add_argument("--smooth", type=float, default=0.0, metavar="R", help="smooth outlines over R pixels")
    parser.add_argument(
        "--dilate", type=float, default=0.0, metavar="R", help="grow objects by R pixels (neighbours never merge)"
    )
    parser.add_argument("--erode", type=float, default=0.0, metavar="R", help="shrink objects by R pixels")
    parser.add_argument(
        "--min-size", type=int, default=0, metavar="N", help="remove objects smaller than N pixels (voxels in 3D)"
    )
    parser.add_argument(
        "--min-area",
        type=float,
        default=0.0,
        metavar="A",
        help="remove objects smaller than A square micrometres (cubic for 3D volumes); needs pixel sizes in the file",
    )
    parser.add_argument("--planewise", action="store_true", help="treat each plane of a stack as a 2D image")
    parser.add_argument("--relabel", action="store_true", help="renumber the objects 1..n at the end")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segtune.core import labels as lab
    from segtune.core.io import open_image, output_name, read_labels, write_labels
    from segtune.core.metrics import to_instances

    for option in ("smooth", "dilate", "erode", "min_area", "split_distance"):
        value = getattr(args, option)
        if value is not None and value < 0:
            raise UsageError(f"--{option.replace('_', '-')} must be 0 or more, got {value}")
    if args.min_size < 0:
        raise UsageError(f"--min-size must be 0 or more, got {args.min_size}")
    out_dir = Path(args.out)
    paths = [Path(p) for p in args.labels]
    targets = [out_dir / output_name(p, suffix="") for p in paths]  # a_labels.ome.tif -> a_labels.tif
    if len(set(targets)) < len(targets):
        raise UsageError(
            "two --labels files would be written to the same output name; clean them into separate folders"
        )
    for path, target in zip(paths, targets, strict=True):
        if target.resolve() == path.resolve():
            raise UsageError(f"--out would replace the input {path} itself; choose another folder")
        if target.exists() and not args.overwrite:
            raise FileExistsError(f"{target} already exists; pass --overwrite to replace it")

    out_dir.mkdir(parents=True, exist_ok=True)
    for path, target in zip(paths, targets, strict=True):
        reference = open_image(path)
        sizes = reference.sizes()
        labels = read_labels(path)
        axes = ("T" if sizes["T"] > 1 else "") + ("Z" if sizes["Z"] > 1 else "") + "YX"
        labels = labels.reshape(tuple(sizes[a] for a in axes))
        pixel_sizes = tuple(reference.physical_pixel_sizes)  # Z, Y, X
        volumes = [labels[t] for t in range(labels.shape[0])] if axes.startswith("T") else [labels]
        volumes = [to_instances(volume, name=str(path))[0] for volume in volumes]
        before = sum(lab.object_count(v) for v in volumes)
        cleaned = [clean(volume, args, pixel_sizes, path) for volume in volumes]
        result = np.stack(cleaned) if axes.startswith("T") else cleaned[0]
        after = sum(lab.object_count(v) for v in cleaned)
        written = write_labels(target, result, pixel_sizes=pixel_sizes, overwrite=args.overwrite, axes=axes)
        print(f"{path}: {before} -> {after} object(s) -> {written}")
    return 0


def clean(labels: np.ndarray, args: argparse.Namespace, pixel_sizes: tuple, path: Path) -> np.ndarray:
    """The steps ``args`` asks for, in the documented order, on one 2D image or 3D volume."""
    from segtune.core import labels as lab

    planewise = args.planewise and labels.ndim == 3
    if args.remove_border:
        labels = lab.remove_border(labels, planewise=planewise)
    if args.fill_holes:  # before splitting, so the pieces of a split include the filled holes
        labels = lab.fill_holes(labels, planewise=planewise)
    if args.split:
        labels = lab.split_objects(labels, min_distance=args.split_distance, planewise=planewise)
    if args.smooth:
        labels = lab.smooth(labels, args.smooth, planewise=planewise)
    if args.dilate:
        labels = lab.dilate(labels, args.dilate, planewise=planewise)
    if args.erode:
        labels = lab.erode(labels, args.erode, planewise=planewise)
    if args.min_size:
        labels = lab.remove_small(labels, args.min_size, planewise=planewise)
    if args.min_area:
        measured = pixel_sizes[-2:] if planewise or labels.ndim == 2 else pixel_sizes
        if any(s is None for s in measured):
            raise UsageError(f"--min-area needs pixel sizes, and {path} has none; use --min-size in pixels")
        labels = lab.remove_small(labels, args.min_area, pixel_size=measured, planewise=planewise)
    if args.relabel:
        labels = lab.relabel_sequential(labels)
    return labels
