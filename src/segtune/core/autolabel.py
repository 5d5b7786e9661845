"""Binary labels from a fluorescence channel: CLAHE, local Otsu, diameter filter, fill holes, dataset filter.

The recipe is the cell-identification thesis's way of making training labels without drawing
any (Fiji's CLAHE and *Auto Local Threshold* there, scikit-image here):

1. optional percentile contrast stretch (``stretch=(5, 98)``);
2. CLAHE with block size 127, 256 bins and clip slope 3 (:func:`segtune.core.normalize.clahe`);
3. local (adaptive) Otsu: a pixel is foreground when it is brighter than the Otsu threshold of
   the histogram of the disk of radius ``otsu_radius`` around it (:func:`local_otsu`);
4. object diameter filter: connected objects (8-connected in 2D) whose equivalent diameter
   ``sqrt(4 * area / pi)`` lies outside ``[min_diameter, max_diameter]`` are removed
   (:func:`diameter_filter`);
5. holes inside objects are filled.

Then :func:`dataset_filter` drops the images whose labels are least trustworthy: the
``floor(lowest_fraction * n)`` images with the fewest foreground pixels (ties in input order)
and every image with more foreground than background pixels. :func:`autolabel_files` runs the
whole thing over files (every T and Z plane of a stack is one image) and writes the labels of
the images kept, plus a report saying what was dropped and why.

With a two-channel input (phase contrast or brightfield + fluorescence), ``channel`` picks the
fluorescence channel the labels come from and ``export_channel`` writes the other channel beside
the labels, so that ``segtune train`` can learn to find in one channel what the other shows.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from segtune.core.labels import connected_components
from segtune.core.progress import CancelToken, ProgressCallback, Reporter

logger = logging.getLogger(__name__)

__all__ = [
    "AutolabelReport",
    "AutolabelSettings",
    "PlaneResult",
    "autolabel_files",
    "autolabel_image",
    "dataset_filter",
    "diameter_filter",
    "equivalent_diameters",
    "local_otsu",
]

REPORT_JSON = "autolabel_report.json"
REPORT_CSV = "autolabel_report.csv"


@dataclass(frozen=True)
class AutolabelSettings:
    """Parameters of the auto-labelling recipe (defaults: the thesis's).

    Attributes
    ----------
    clahe_kernel
        CLAHE block size in pixels (127), or None for 1/8 of the image size.
    clahe_clip
        CLAHE clip slope as ImageJ states it (3).
    clahe_bins
        CLAHE histogram bins (256).
    otsu_radius
        Radius in pixels of the disk the local Otsu threshold is computed over; None uses
        ``max_diameter`` (the window then holds a whole object and some background around it).
    min_diameter, max_diameter
        Objects whose equivalent diameter in pixels lies outside this range are removed (5-30).
    fill_holes
        Fill holes inside objects.
    stretch
        ``(low, high)`` percentiles of a contrast stretch applied first (e.g. ``(5, 98)``), or None.
    """

    clahe_kernel: int | None = 127
    clahe_clip: float = 3.0
    clahe_bins: int = 256
    otsu_radius: int | None = None
    min_diameter: float = 5.0
    max_diameter: float = 30.0
    fill_holes: bool = True
    stretch: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.clahe_kernel is not None and int(self.clahe_kernel) < 2:
            raise ValueError(f"clahe_kernel must be at least 2 pixels (or None), got {self.clahe_kernel}")
        if not self.clahe_clip > 0:
            raise ValueError(f"clahe_clip must be positive, got {self.clahe_clip}")
        if not 2 <= int(self.clahe_bins) <= 65536:
            raise ValueError(f"clahe_bins must be from 2 to 65536, got {self.clahe_bins}")
        if self.otsu_radius is not None and int(self.otsu_radius) < 1:
            raise ValueError(f"otsu_radius must be a positive number of pixels (or None), got {self.otsu_radius}")
        if not 0 <= self.min_diameter <= self.max_diameter:
            raise ValueError(
                f"diameters must satisfy 0 <= min_diameter <= max_diameter, got min_diameter={self.min_diameter}, "
                f"max_diameter={self.max_diameter}"
            )
        if self.stretch is not None:
            low, high = self.stretch
            if not 0 <= low < high <= 100:
                raise ValueError(f"stretch percentiles must satisfy 0 <= low < high <= 100, got {self.stretch}")

    @property
    def radius(self) -> int:
        """The local Otsu radius actually used."""
        return int(self.otsu_radius) if self.otsu_radius is not None else max(1, int(round(self.max_diameter)))


def local_otsu(image: np.ndarray, radius: int) -> np.ndarray:
    """Local Otsu threshold: True where a pixel exceeds the Otsu threshold of the disk around it.

    Parameters
    ----------
    image
        2D image. Floats are taken to lie in [0, 1] (as CLAHE returns them) and quantised to 256
        levels; unsigned integers of at most 16 bits are used as they are.
    radius
        Radius of the disk (the window) in pixels.

    Returns
    -------
    numpy.ndarray
        Boolean mask of the image's shape.

    Examples
    --------
    >>> image = np.zeros((20, 20)); image[5:10, 5:10] = 1.0
    >>> int(local_otsu(image, radius=6).sum())
    25
    """
    from skimage.filters import rank
    from skimage.morphology import disk

    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"local_otsu takes a 2D image, got shape {image.shape}")
    if int(radius) < 1:
        raise ValueError(f"radius must be a positive number of pixels, got {radius}")
    if np.issubdtype(image.dtype, np.floating):
        levels = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    elif image.dtype in (np.uint8, np.uint16):
        levels = image
    else:
        raise ValueError(f"local_otsu takes a float image in [0, 1] or a uint8/uint16 image, got dtype {image.dtype}")
    threshold = rank.otsu(levels, disk(int(radius)))
    return levels > threshold


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """``sqrt(4 * area / pi)`` of every label 0..max (index 0, the background, included)."""
    areas = np.bincount(np.asarray(labels).ravel())
    return np.sqrt(4.0 * areas / math.pi)


def diameter_filter(mask: np.ndarray, min_diameter: float, max_diameter: float) -> np.ndarray:
    """Keep the connected objects of ``mask`` whose equivalent diameter is in ``[min, max]``.

    Objects are fully connected (8-neighbourhood in 2D, 26 in 3D); in 3D the "diameter" is that
    of the disk with the object's voxel count, so the filter is meant for 2D.

    Examples
    --------
    >>> mask = np.zeros((30, 30), bool); mask[1:3, 1:3] = True; mask[10:20, 10:20] = True
    >>> [int(v) for v in np.unique(ndi.label(diameter_filter(mask, 5, 30))[0])]
    [0, 1]
    """
    mask = np.asarray(mask, dtype=bool)
    if min_diameter > max_diameter:
        raise ValueError(f"min_diameter {min_diameter} is larger than max_diameter {max_diameter}")
    labels, _ = connected_components(mask)
    diameters = equivalent_diameters(labels)
    keep = (diameters >= min_diameter) & (diameters <= max_diameter)
    keep[0] = False
    return keep[labels]


def autolabel_image(image: np.ndarray, settings: AutolabelSettings | None = None, **overrides: Any) -> np.ndarray:
    """Binary foreground mask of one 2D fluorescence image (see the module docstring).

    Parameters
    ----------
    image
        2D array (any real dtype).
    settings
        The recipe's parameters; ``overrides`` replace single fields
        (``autolabel_image(x, min_diameter=10)``).

    Returns
    -------
    numpy.ndarray
        Boolean mask, True on objects.

    Examples
    --------
    >>> image = np.zeros((64, 64), np.float32); image[20:32, 20:32] = 1.0
    >>> int(autolabel_image(image, clahe_kernel=32).sum())
    144
    """
    from segtune.core.normalize import clahe, percentile_normalize

    settings = _settings(settings, overrides)
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"autolabel_image takes a 2D image, got shape {image.shape}")
    image = image.astype(np.float32, copy=False)
    if settings.stretch is not None:
        image = percentile_normalize(image, *settings.stretch, clip=True)
    kernel = settings.clahe_kernel
    if kernel is not None:
        # skimage needs the block to fit; a small image simply gets one block per axis
        kernel = tuple(min(int(kernel), n) for n in image.shape)
    enhanced = clahe(image, kernel_size=kernel, clip_limit=settings.clahe_clip, nbins=int(settings.clahe_bins))
    mask = local_otsu(enhanced, settings.radius)
    mask = diameter_filter(mask, settings.min_diameter, settings.max_diameter)
    if settings.fill_holes:
        mask = ndi.binary_fill_holes(mask)
    return mask


def _settings(settings: AutolabelSettings | None, overrides: dict[str, Any]) -> AutolabelSettings:
    base = settings if settings is not None else AutolabelSettings()
    if not overrides:
        return base
    known = set(AutolabelSettings.__dataclass_fields__)
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown auto-label settings {sorted(unknown)}; known: {', '.join(sorted(known))}")
    return AutolabelSettings(**{**asdict(base), **overrides})


def dataset_filter(
    foreground_fractions: Sequence[float], *, lowest_fraction: float = 0.25, max_foreground_fraction: float = 0.5
) -> list[list[str]]:
    """Which auto-labelled images to drop, and why.

    Parameters
    ----------
    foreground_fractions
        Fraction of foreground pixels of each image, in order.
    lowest_fraction
        The ``floor(lowest_fraction * n)`` images with the fewest foreground pixels are dropped
        (a stable sort: among equal fractions the earlier image goes first).
    max_foreground_fraction
        Images with a larger foreground fraction are dropped (0.5: more foreground than background).

    Returns
    -------
    list of list of str
        For each image the reasons it is dropped (empty: kept): ``"lowest_foreground"`` and/or
        ``"more_foreground_than_background"``.

    Examples
    --------
    >>> dataset_filter([0.10, 0.02, 0.60, 0.20])
    [[], ['lowest_foreground'], ['more_foreground_than_background'], []]
    """
    fractions = np.asarray(foreground_fractions, dtype=np.float64)
    if fractions.ndim != 1:
        raise ValueError(f"foreground_fractions must be a sequence of numbers, got shape {fractions.shape}")
    if not 0 <= lowest_fraction < 1:
        raise ValueError(f"lowest_fraction must be in [0, 1), got {lowest_fraction}")
    if not 0 < max_foreground_fraction <= 1:
        raise ValueError(f"max_foreground_fraction must be in (0, 1], got {max_foreground_fraction}")
    reasons: list[list[str]] = [[] for _ in fractions]
    n_lowest = int(math.floor(lowest_fraction * len(fractions) + 1e-9))
    for index in np.argsort(fractions, kind="stable")[:n_lowest]:
        reasons[int(index)].append("lowest_foreground")
    for index, fraction in enumerate(fractions):
        if fraction > max_foreground_fraction:
            reasons[index].append("more_foreground_than_background")
    return reasons


@dataclass
class PlaneResult:
    """One auto-labelled image (a plane of a file) and what became of it."""

    source: str
    name: str
    t: int
    z: int
    foreground_fraction: float
    objects: int
    kept: bool = True
    reasons: list[str] = field(default_factory=list)
    labels_file: str | None = None
    image_file: str | None = None


@dataclass
class AutolabelReport:
    """What :func:`autolabel_files` did: the settings, and every image with its fate."""

    settings: dict[str, Any]
    channel: int
    export_channel: int | None
    filter: dict[str, Any] | None
    planes: list[PlaneResult]

    @property
    def kept(self) -> list[PlaneResult]:
        return [p for p in self.planes if p.kept]

    @property
    def dropped(self) -> list[PlaneResult]:
        return [p for p in self.planes if not p.kept]

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "channel": self.channel,
            "export_channel": self.export_channel,
            "filter": self.filter,
            "kept": len(self.kept),
            "dropped": len(self.dropped),
            "images": [asdict(p) for p in self.planes],
        }


def autolabel_files(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    settings: AutolabelSettings | None = None,
    channel: int = 0,
    export_channel: int | None = None,
    apply_filter: bool = True,
    lowest_fraction: float = 0.25,
    max_foreground_fraction: float = 0.5,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> AutolabelReport:
    """Auto-label every plane of ``paths``, filter the set, write labels and a report to ``out``.

    Parameters
    ----------
    paths
        Image files (anything :func:`segtune.core.io.open_image` reads). Every (T, Z) plane of a
        file is one image.
    out
        Output folder. For input ``name.ext`` it receives ``name_labels.tif`` (uint8 0/1, with
        the input's pixel sizes), or ``name_t{T}_z{Z}_labels.tif`` per plane of a stack; with
        ``export_channel`` also ``name_c{C}.tif`` (the other channel's plane, its own dtype);
        and ``autolabel_report.json`` / ``autolabel_report.csv``.
    settings
        The recipe's parameters (:class:`AutolabelSettings`).
    channel
        Channel the labels are made from.
    export_channel
        Another channel to write beside each label image (the input a model then learns from).
    apply_filter
        Apply :func:`dataset_filter`; without it every image is kept.
    lowest_fraction, max_foreground_fraction
        See :func:`dataset_filter`.
    overwrite
        Replace existing output files.
    progress, cancel
        See :mod:`segtune.core.progress`. Labels are written only once every image is done, so
        a cancelled run leaves no partial set behind.

    Returns
    -------
    AutolabelReport

    Raises
    ------
    ValueError
        No paths, or a channel the file does not have.
    FileExistsError
        An output exists and ``overwrite`` is False (checked before any work).
    segtune.core.io.ImageReadError
        A file cannot be read.
    """
    from segtune.core.io import open_image, output_name, write_labels

    settings = settings if settings is not None else AutolabelSettings()
    if not paths:
        raise ValueError("autolabel needs at least one image path")
    out = Path(out)
    images = [(Path(p), open_image(p)) for p in paths]
    planes: list[tuple[Path, Any, int, int, str]] = []
    for path, image in images:
        n_t, n_c, n_z = image.data.shape[:3]
        for name, index in (("channel", channel), ("export_channel", export_channel)):
            if index is not None and not 0 <= index < n_c:
                raise ValueError(
                    f"{name} {index} is out of range: {path} has {n_c} channel(s) ({', '.join(image.channel_names)})"
                )
        stem = output_name(path, suffix="", extension="")
        for t in range(n_t):
            for z in range(n_z):
                name = stem if n_t * n_z == 1 else f"{stem}_t{t}_z{z}"
                planes.append((path, image, t, z, name))
    names = [p[4] for p in planes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several inputs would write the same output names {duplicates[:5]}; rename the inputs")
    if not overwrite:
        for name in names:
            for target in _targets(out, name, export_channel):
                if target.exists():
                    raise FileExistsError(
                        f"{target} already exists; pass overwrite=True (or --overwrite) to replace it"
                    )
        for report_name in (REPORT_JSON, REPORT_CSV):
            if (out / report_name).exists():
                raise FileExistsError(
                    f"{out / report_name} already exists; pass overwrite=True (or --overwrite) to replace it"
                )

    report = Reporter(progress, cancel, stage="autolabel", total=len(planes))
    report.check()
    results: list[PlaneResult] = []
    packed: list[tuple[np.ndarray, tuple[int, ...]]] = []
    for i, (path, image, t, z, name) in enumerate(planes):
        plane = np.asarray(image.data[t, channel, z].compute())
        mask = autolabel_image(plane, settings)
        _, n_objects = connected_components(mask)
        results.append(
            PlaneResult(
                source=str(path), name=name, t=t, z=z, foreground_fraction=float(mask.mean()), objects=int(n_objects)
            )
        )
        packed.append((np.packbits(mask), mask.shape))  # 1 bit a pixel until the set is judged
        report.step(i + 1, message=name, foreground=round(float(mask.mean()), 4))

    filter_settings = None
    if apply_filter:
        filter_settings = {"lowest_fraction": lowest_fraction, "max_foreground_fraction": max_foreground_fraction}
        for result, reasons in zip(
            results, dataset_filter([r.foreground_fraction for r in results], **filter_settings), strict=True
        ):
            result.reasons = reasons
            result.kept = not reasons

    out.mkdir(parents=True, exist_ok=True)
    for (_path, image, t, z, name), result, (bits, shape) in zip(planes, results, packed, strict=True):
        if not result.kept:
            continue
        mask = np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape)
        labels_path, *image_path = _targets(out, name, export_channel)
        sizes = image.physical_pixel_sizes
        write_labels(labels_path, mask.astype(np.uint8), pixel_sizes=sizes, overwrite=overwrite)
        result.labels_file = labels_path.name
        if export_channel is not None:
            _write_plane(image_path[0], np.asarray(image.data[t, export_channel, z].compute()), sizes)
            result.image_file = image_path[0].name

    result_report = AutolabelReport(
        settings={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()}
        | {"otsu_radius_used": settings.radius},
        channel=channel,
        export_channel=export_channel,
        filter=filter_settings,
        planes=results,
    )
    _write_reports(out, result_report)
    logger.info(
        "auto-labelled %d image(s): %d kept, %d dropped",
        len(results),
        len(result_report.kept),
        len(result_report.dropped),
    )
    return result_report


def _targets(out: Path, name: str, export_channel: int | None) -> list[Path]:
    targets = [out / f"{name}_labels.tif"]
    if export_channel is not None:
        targets.append(out / f"{name}_c{export_channel}.tif")
    return targets


def _write_plane(path: Path, plane: np.ndarray, sizes: Any) -> None:
    import tifffile

    from segtune.core.files import atomic_write_bytes, ome_metadata

    metadata = ome_metadata("YX", (None, *tuple(sizes)[1:]))
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, plane, ome=True, metadata=metadata)
    atomic_write_bytes(path, buffer.getvalue())


def _write_reports(out: Path, report: AutolabelReport) -> None:
    from segtune.core.files import atomic_write_text

    atomic_write_text(out / REPORT_JSON, json.dumps(report.to_dict(), indent=2) + "\n")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(
        ["source", "name", "t", "z", "foreground_fraction", "objects", "kept", "reasons", "labels_file", "image_file"]
    )
    for p in report.planes:
        writer.writerow(
            [
                p.source,
                p.name,
                p.t,
                p.z,
                f"{p.foreground_fraction:.6f}",
                p.objects,
                p.kept,
                ";".join(p.reasons),
                p.labels_file or "",
                p.image_file or "",
            ]
        )
    atomic_write_text(out / REPORT_CSV, text.getvalue())
