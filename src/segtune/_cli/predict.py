"""`segtune predict`: segment image files with a model, writing one label file per input."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from segtune.core.predict import PredictedFile

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment images with a model",
        description=(
            "Segment image files (CZI, TIFF, PNG) with a model, tile by tile: stitched tiles equal one "
            "untiled pass. For input name.ext writes DIR/name_labels.tif: a uint8 0/1 mask, or uint16 "
            "instance labels with --instances, carrying the input's pixel sizes. With --format ome-zarr "
            "the labels are an OME-Zarr pyramid: in an OME-Zarr input's own labels/ group (named after "
            "the model), else DIR/name_labels.ome.zarr. Existing outputs are "
            "refused unless --overwrite (or skipped with --skip-existing)."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, or folders of them")
    parser.add_argument(
        "--model", required=True, metavar="M", help="a bundled model name (see 'segtune models') or a model folder"
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="folder for the label files (created if missing); "
        "not needed with --format ome-zarr when every input is an OME-Zarr",
    )
    parser.add_argument(
        "--format",
        default="tiff",
        choices=("tiff", "ome-zarr"),
        help="OME-TIFF label files (default) or OME-Zarr labels with multiscale levels, streamed tile by tile "
        "(masks never whole in memory; --instances and size filters are computed in memory)",
    )
    parser.add_argument(
        "--tile",
        default=None,
        metavar="N[,N...]",
        help="largest tile fed to the model, one size or one per axis (default: as large as memory allows)",
    )
    parser.add_argument(
        "--overlap", type=float, default=None, help="window overlap for --blend gaussian (default 0.25)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, metavar="N", help="tiles per forward pass (default: what memory allows)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda", "mps"),
        help="where to run the model; auto tries CUDA, then MPS, then the CPU",
    )
    parser.add_argument(
        "--channel",
        default=None,
        metavar="C",
        help="input channel by index or name (needed for multi-channel images); the name of a colour "
        "channel (Bright, or RGB for an unnamed one) gives a one-channel model the mean of its red, green and "
        "blue, which is what an RGB image (PNG, TIFF) gets when no channel is given",
    )
    parser.add_argument(
        "--instances",
        action="store_true",
        help="write instance labels (uint16; uint32 above 65535 objects and block by block) instead of a 0/1 mask",
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="foreground probability threshold (default 0.5)")
    parser.add_argument(
        "--min-size",
        default="auto",
        metavar="PX",
        help="drop objects smaller than this many pixels (voxels in 3D); 'auto' (default, as in the napari widget): "
        "a disc (ball) a quarter of the object diameter across, e.g. 20 px for 20 px nuclei, at least 4 px "
        "(8 voxels), or 10 px when the diameter is unknown; 0 keeps every object",
    )
    parser.add_argument(
        "--max-size", type=int, default=None, metavar="PX", help="drop objects larger than this (default: no limit)"
    )
    parser.add_argument("--fill-holes", action="store_true", help="fill holes inside objects")
    parser.add_argument(
        "--split", action="store_true", help="split touching objects (binary models) by a distance watershed"
    )
    parser.add_argument(
        "--diameter",
        default="auto",
        metavar="PX",
        help="typical object diameter in pixels: the image is zoomed so objects match the size the model was "
        "trained at, and the labels zoomed back; 'auto' (default) estimates it for models that ask for it "
        "(the bundled nuclei models), 0 never zooms",
    )
    parser.add_argument(
        "--blend",
        default="exact",
        choices=("exact", "gaussian"),
        help="exact stitching (default) or MONAI-style Gaussian blending",
    )
    parser.add_argument(
        "--precision",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="float32 (default) or half-precision autocast on CUDA",
    )
    parser.add_argument(
        "--memory-limit",
        default=None,
        metavar="SIZE",
        help="memory one forward pass may use, e.g. 2GB (default: half the free memory)",
    )
    parser.add_argument(
        "--blockwise",
        action="store_true",
        help="predict each plane block by block, streaming the labels into a tiled TIFF: memory stays bounded whatever "
        "the image size (automatic for planes over 4096 x 4096 with a 2D model); objects keep one number across blocks",
    )
    parser.add_argument(
        "--scene", default=None, metavar="S", help="scene (CZI) or series (TIFF) to read, by index or name"
    )
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace label files that exist")
    existing.add_argument("--skip-existing", action="store_true", help="leave inputs whose label file exists alone")
    parallel = parser.add_mutually_exclusive_group()
    parallel.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help=(
            "run on a local dask cluster of N worker processes: one task per file, "
            "or per chunk of a volume too large for one"
        ),
    )
    parallel.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on a dask.distributed cluster: its scheduler's address (tcp://host:8786) or scheduler file (.json)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segtune._cli.common import UsageError
    from segtune.core.io import output_name

    inputs = _expand(args.inputs)
    ome_zarr = getattr(args, "format", "tiff") == "ome-zarr"
    if args.out is None and not (ome_zarr and all(_is_ome_zarr(p) for p in inputs)):
        raise UsageError("--out DIR is required (only OME-Zarr inputs with --format ome-zarr can do without it)")
    if ome_zarr and (args.workers is not None or args.scheduler):
        raise UsageError("--format ome-zarr streams in one process; drop --workers/--scheduler")
    out_dir = Path(args.out or ".")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} exists and is not a folder")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold must be between 0 and 1, got {args.threshold}")
    jobs: list[dict[str, Any]] = []
    seen: dict[Path, Path] = {}
    for path in inputs:
        target = out_dir / output_name(path)
        if ome_zarr:
            target = _ome_zarr_target(path, out_dir, args.model)
        if target in seen:
            raise UsageError(
                f"{path} and {seen[target]} would both be written to {target}; predict them into different folders"
            )
        seen[target] = path
        jobs.append({"input": str(path), "output": str(target), "format": "ome-zarr" if ome_zarr else "tiff"})
    present = [job for job in jobs if Path(job["output"]).exists()]
    if present and args.skip_existing:
        for job in present:
            print(f"segtune predict: {job['output']} exists; skipping {job['input']}", file=sys.stderr)
        jobs = [job for job in jobs if not Path(job["output"]).exists()]
    elif present and not args.overwrite:
        names = ", ".join(job["output"] for job in present[:3]) + (" ..." if len(present) > 3 else "")
        raise FileExistsError(
            f"{len(present)} output(s) exist ({names}); pass --overwrite to replace or --skip-existing to keep them"
        )
    if not jobs:
        return 0

    options = _options(args)
    if args.out is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    if args.workers is not None or args.scheduler:
        return _run_distributed(jobs, options, args)
    from segtune.core.models.store import load_model
    from segtune.core.predict import PredictedFile

    model = load_model(args.model, device="cpu")
    results = [_guarded(job, options, model, len(jobs) > 1, bar=True) for job in jobs]
    done = [r for r in results if isinstance(r, PredictedFile)]
    counted = [r.objects for r in done if r.objects is not None]
    total = f", {sum(counted)} object(s) in total" if counted else ""
    print(f"{len(done)} file(s) written{f' to {out_dir}' if args.out is not None else ''}{total}")
    failed = [r for r in results if not isinstance(r, PredictedFile)]
    if failed:
        raise UsageError(f"{len(failed)} of {len(jobs)} input(s) failed (see above)")
    return 0


def _line(done: PredictedFile) -> str:
    """``out/cells_labels.tif: 113 objects, diameter 18.4 px, objects under 17 px dropped``."""
    if done.objects is None:  # streamed OME-Zarr labels: written tile by tile, not counted
        return f"{done.output}: written"
    diameter = f"diameter {done.diameter:.1f} px" if done.diameter else "not rescaled"
    sizes = f"objects under {done.min_size} px dropped" if done.min_size else "no size filter"
    grey = ", its colours averaged to grey (--channel picks one)" if done.grey else ""
    return f"{done.output}: {done.objects} object(s), {diameter}, {sizes}{grey}"


def _guarded(job: dict[str, Any], options: dict[str, Any], model: Any, many: bool, bar: bool) -> PredictedFile | str:
    """Predict one file and print its line; with several inputs a bad file is reported and the others go on."""
    from segtune._cli.common import UsageError
    from segtune.core.io import ImageReadError

    try:
        result = _predict_one(
            job["input"], job["output"], model=model, bar=bar, output_format=job.get("format", "tiff"), **options
        )
    except (ImageReadError, ValueError, OSError) as e:
        named = Path(job["input"]).name in str(e) or Path(job["output"]).name in str(e)
        message = str(e) if named else f"{job['input']}: {e}"  # say which input it was
        if not many:
            if named:
                raise
            raise UsageError(message) from e
        print(f"segtune predict: error: {message}", file=sys.stderr)
        return str(e)
    print(_line(result), flush=True)
    return result


def _predict_one(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    model: Any,
    bar: bool = True,
    scene: str | int | None = None,
    overwrite: bool = False,
    output_format: str = "tiff",
    **options: Any,
) -> PredictedFile:
    """Predict one image file and write its labels (the work of one input of ``segtune predict``).

    ``model`` is a ``(module, config)`` pair or a model name/folder; ``options`` go to
    :func:`segtune.core.predict.predict_file` (instance labels stored as uint16, masks as uint8),
    with a progress bar named after the file when ``bar``. ``output_format="ome-zarr"`` streams
    OME-Zarr labels to ``output_path`` (from :func:`_ome_zarr_target`); their objects are not counted.
    """
    from segtune.core.predict import PredictedFile, predict_file
    from segtune.core.progress import tqdm_progress

    if output_format == "ome-zarr":
        from segtune.core.io import open_image

        image = open_image(input_path, scene=scene)
        options = {k: v for k, v in options.items() if k != "blockwise"}  # OME-Zarr labels stream on their own
        written = _predict_ome_zarr(Path(input_path), Path(output_path), model, image, bar, overwrite, options)
        return PredictedFile(written, None, None, 0)
    name = Path(input_path).name
    with tqdm_progress(name, leave=False, disable=not bar) as callback:
        return predict_file(
            input_path,
            output_path,
            model=model,
            scene=scene,
            overwrite=overwrite,
            label_dtype=_label_dtype(options),
            progress=(lambda e: callback(replace(e, stage=name))) if bar else None,
            **options,
        )


def _label_dtype(options: dict[str, Any]) -> type:
    """What ``segtune predict`` writes: uint16 instance labels, a uint8 mask (wider only when needed)."""
    return np.uint16 if options.get("instances") else np.uint8


def _is_ome_zarr(path: Path) -> bool:
    from segtune.core.omezarr import is_ome_zarr

    return is_ome_zarr(path)


def _ome_zarr_target(path: Path, out_dir: Path, model: str) -> Path:
    """An OME-Zarr input's ``labels/<model name>``; else ``DIR/name_labels.ome.zarr``."""
    from segtune.core.io import output_name

    if _is_ome_zarr(path):
        model_path = Path(str(model))
        named = model_path.parent if model_path.name.lower() in ("rdf.yaml", "bioimageio.yaml") else model_path
        return path / "labels" / re.sub(r"\.zip$", "", named.name, flags=re.IGNORECASE)
    return out_dir / output_name(path, extension=".ome.zarr")


def _predict_ome_zarr(
    input_path: Path, output_path: Path, model: Any, image: Any, bar: bool, overwrite: bool, options: dict[str, Any]
) -> Path:
    """OME-Zarr labels into the source's ``labels/`` group or a labels image of their own, streamed."""
    from segtune.core.omezarr import predict_to_ome_zarr
    from segtune.core.progress import tqdm_progress

    into_source = output_path.parent.name == "labels" and output_path.parent.parent == input_path
    destination, name = (input_path, output_path.name) if into_source else (output_path, None)
    label = input_path.name
    with tqdm_progress(label, leave=False, disable=not bar) as callback:
        return predict_to_ome_zarr(
            model,
            image,
            destination,
            name=name,
            overwrite=overwrite,
            progress=lambda e: callback(replace(e, stage=label)),
            **options,
        )


def _options(args: argparse.Namespace) -> dict[str, Any]:
    from segtune._cli.common import UsageError
    from segtune.core.predict import ObjectOptions, TilingOptions

    tile = None
    if args.tile:
        try:
            sizes = [int(s) for s in str(args.tile).split(",")]
        except ValueError as e:
            raise UsageError(
                f"--tile must be a size or comma-separated sizes like 256 or 32,256,256, got {args.tile!r}"
            ) from e
        if any(s < 1 for s in sizes):
            raise UsageError(f"--tile sizes must be positive, got {args.tile!r}")
        tile = sizes[0] if len(sizes) == 1 else tuple(sizes)
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.overlap is not None and not 0.0 <= args.overlap < 1.0:
        raise UsageError(f"--overlap must be in [0, 1), got {args.overlap}")
    channel: Any = args.channel
    if channel is not None and channel.lstrip("-").isdigit():
        channel = int(channel)
    scene: Any = args.scene
    if scene is not None and scene.isdigit():
        scene = int(scene)
    min_size: Any = str(args.min_size).strip().lower()
    if min_size != "auto":
        try:
            min_size = int(min_size)
        except ValueError as e:
            raise UsageError(f"--min-size must be a number of pixels or 'auto', got {args.min_size!r}") from e
        if min_size < 0:
            raise UsageError(f"--min-size must not be negative, got {args.min_size!r}")
    diameter: Any = str(getattr(args, "diameter", "auto")).strip().lower()
    if diameter != "auto":
        try:
            diameter = float(diameter)
        except ValueError as e:
            raise UsageError(f"--diameter must be a number of pixels, 'auto' or 0, got {args.diameter!r}") from e
        if not diameter >= 0:
            raise UsageError(f"--diameter must be positive (or 0 for no zoom), got {args.diameter!r}")
    return {
        "tiling": TilingOptions(
            tile_shape=tile,
            overlap=args.overlap,
            batch_size=args.batch_size,
            blend=args.blend,
            precision=args.precision,
            memory_limit=args.memory_limit,
        ),
        "device": args.device,
        "channel": channel,
        "instances": args.instances,
        "threshold": args.threshold,
        "objects": ObjectOptions(
            split=args.split, min_size=min_size, max_size=args.max_size, fill_holes=args.fill_holes
        ),
        "diameter": diameter,
        "scene": scene,
        "overwrite": args.overwrite,
        "blockwise": args.blockwise,
    }


def _run_distributed(jobs: list[dict[str, Any]], options: dict[str, Any], args: argparse.Namespace) -> int:
    """--workers / --scheduler: the same per-file work as tasks on a dask cluster (core.parallel_predict)."""
    from segtune._cli.common import UsageError
    from segtune.core import parallel_predict
    from segtune.core.progress import tqdm_progress

    options = dict(options)
    scene, overwrite = options.pop("scene"), options.pop("overwrite")
    if options.pop("blockwise", False):
        raise UsageError(
            "--blockwise runs in one process; with --workers or --scheduler, planes over 4096 x 4096 go "
            "block by block on their own"
        )
    try:
        with tqdm_progress("files") as callback:
            report = parallel_predict.predict_files(
                args.model,
                [job["input"] for job in jobs],
                args.out,
                workers=args.workers,
                scheduler=args.scheduler,
                scene=scene,
                overwrite=overwrite,
                label_dtype=_label_dtype(options),
                progress=callback,
                **options,
            )
    except ImportError as e:
        raise UsageError(str(e)) from e
    except parallel_predict.PredictionFailed as e:
        for name, message in e.report.failed.items():
            print(f"segtune predict: error: {name}: {message}", file=sys.stderr)
        raise UsageError(f"{len(e.report.failed)} of {len(jobs)} input(s) failed (see above)") from None
    for output in report.outputs.values():  # the workers counted no objects: one line per file
        print(output)
    print(f"{len(report.outputs)} file(s) written to {args.out} by {report.workers} worker(s)")
    return 0


def _expand(paths: list[str]) -> list[Path]:
    """Files as given; folders stand for the image files directly inside them."""
    from segtune.core.io import SUPPORTED_EXTENSIONS

    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir() and not _is_ome_zarr(path):
            found = sorted(
                p
                for p in path.iterdir()
                if (p.is_file() and p.name.lower().endswith(SUPPORTED_EXTENSIONS)) or _is_ome_zarr(p)
            )
            if not found:
                raise FileNotFoundError(f"input folder {path} holds no image files ({', '.join(SUPPORTED_EXTENSIONS)})")
            files.extend(found)
        else:
            files.append(path)
    return files
