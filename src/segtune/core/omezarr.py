"""OME-Zarr (NGFF v0.4 and v0.5) in and out, through ome-zarr-py.

Reading: :func:`open_ome_zarr` opens the full-resolution level of an OME-Zarr image (or of a
labels image) lazily as a TCZYX dask array, with the pixel sizes of that level's ``scale``
transform converted to micrometres and the channel names of its ``omero`` block.

Writing: :func:`write_ome_zarr_labels` writes labels (numpy or dask, computed chunk by chunk, so
a labels image larger than memory streams from the prediction on disk to its pyramid) as an NGFF
labels image with nearest-neighbour multiscale levels. Into an OME-Zarr source it goes to the
source's ``labels/<name>`` group, as the NGFF spec lays out, so napari-ome-zarr, Fiji (MoBIE)
and QuPath show it over the image; beside any other source it is a labels image of its own.

What a failure leaves behind: the pyramid is written into a temporary folder beside the
destination and renamed into place when complete, and only then is its name added to the
source's ``labels`` list. A cancelled or failed write leaves the source as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["ZARR_EXTENSIONS", "is_ome_zarr", "open_ome_zarr", "pyramid_levels", "write_ome_zarr_labels"]

ZARR_EXTENSIONS = (".ome.zarr", ".zarr")
# NGFF units (UDUNITS-2 names) in micrometres
_UNIT_TO_UM = {
    "angstrom": 1e-4,
    "nanometer": 1e-3,
    "micrometer": 1.0,
    "micron": 1.0,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
    "picometer": 1e-6,
}


def is_ome_zarr(path: str | os.PathLike) -> bool:
    """True for a folder that is a zarr group (v2 or v3) or that is named ``*.zarr``."""
    path = Path(path)
    if not path.is_dir():
        return False
    if path.name.lower().endswith(ZARR_EXTENSIONS):
        return True
    return (path / "zarr.json").is_file() or (path / ".zattrs").is_file()


def _read_error(path: Path, reason: str) -> Exception:
    from segtune.core.io import ImageReadError

    return ImageReadError(path, reason)


def _ngff_metadata(path: Path) -> dict[str, Any]:
    """The NGFF attributes of the group at ``path`` (the ``ome`` block of v0.5, the attributes of v0.4)."""
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as e:
        raise _read_error(path, f"not a readable zarr group ({type(e).__name__}: {e})") from e
    attrs = dict(group.attrs)
    return dict(attrs.get("ome", attrs))


def open_ome_zarr(path: str | os.PathLike, scene: int | str | None = None) -> Any:
    """Open an OME-Zarr image's full-resolution level lazily (see :func:`segtune.core.io.open_image`).

    The image at the group's root is opened; an OME-Zarr that is a labels image (``image-label``)
    opens as a one-channel image of its labels. HCS plates are refused with a message.

    Raises
    ------
    ImageReadError
        Not an OME-Zarr image (no ``multiscales``), an unsupported NGFF version, axes segtune
        cannot place in TCZYX, or no such scene.
    """
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    from segtune.core.io import ImageData, PhysicalPixelSizes, pick_scene

    path = Path(path)
    metadata = _ngff_metadata(path)
    if "plate" in metadata or "well" in metadata:
        raise _read_error(path, "an OME-Zarr HCS plate/well; open one of its images (e.g. plate.zarr/A/1/0)")
    if "multiscales" not in metadata:
        raise _read_error(path, "a zarr group without OME-Zarr 'multiscales' metadata (not an NGFF image)")
    version = str(metadata.get("version") or metadata["multiscales"][0].get("version") or "")
    location = parse_url(str(path), mode="r", fmt=_format(version))
    if location is None:
        raise _read_error(path, "ome-zarr cannot open this location")
    with _quiet("ome_zarr"):  # it logs a warning for every labels image opened on its own ("no parent found")
        nodes = [node for node in Reader(location)() if any(isinstance(s, Multiscales) for s in node.specs)]
    # a labels image naming its source ("image-label": {"source": ...}) brings the source image along:
    # keep the one asked for
    own = [node for node in nodes if Path(str(node.zarr.path)).resolve() == path.resolve()]
    nodes = own or nodes
    if not nodes or not nodes[0].data:
        raise _read_error(path, "the OME-Zarr holds no image data")
    node = nodes[0]
    scenes = [str(node.metadata.get("name") or "Image 0")]
    index = pick_scene(path, scenes, scene)
    full = node.data[0]  # level 0: the full resolution
    axes = [a["name"].lower() if isinstance(a, dict) else str(a).lower() for a in node.metadata.get("axes", [])]
    units = [a.get("unit") if isinstance(a, dict) else None for a in node.metadata.get("axes", [])]
    if len(axes) != full.ndim:
        axes = ["t", "c", "z", "y", "x"][-full.ndim :]  # v0.1-0.3 had no axes: TCZYX by definition
        units = [None] * full.ndim
    if len(set(axes)) != len(axes) or not set(axes) <= set("tczyx"):
        raise _read_error(path, f"cannot place OME-Zarr axes {axes} in TCZYX")
    data = full
    letters = list(axes)
    for letter in "tczyx":
        if letter not in letters:
            data = data[np.newaxis]
            letters.insert(0, letter)
    data = data.transpose([letters.index(a) for a in "tczyx"])
    scale = _level_scale(node.metadata.get("coordinateTransformations"), full.ndim)
    sizes = {}
    for axis in "zyx":
        sizes[axis] = None
        if axis in axes:
            i = axes.index(axis)
            sizes[axis] = _micrometres(scale[i], units[i])
    n_channels = int(data.shape[1])
    names = [str(n) for n in (node.metadata.get("channel_names") or [])]
    if len(names) != n_channels:
        names = [f"Channel {i}" for i in range(n_channels)]
    return ImageData(
        path=path,
        data=data,
        physical_pixel_sizes=PhysicalPixelSizes(sizes["z"], sizes["y"], sizes["x"]),
        channel_names=names,
        scenes=scenes,
        scene=scenes[index],
        metadata={
            "axes": "".join(axes).upper(),
            "format": "ome-zarr",
            "ngff_version": version,
            "levels": [tuple(int(n) for n in level.shape) for level in node.data],
            "is_labels": "image-label" in metadata,
        },
    )


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Raise a library logger to ERROR for the duration (its warnings are not the user's problem)."""
    library = logging.getLogger(name)
    level = library.level
    library.setLevel(logging.ERROR)
    try:
        yield
    finally:
        library.setLevel(level)


def _format(version: str) -> Any:
    """ome-zarr-py's format object for an NGFF version (the newest for an unknown one)."""
    from ome_zarr.format import CurrentFormat, FormatV04, FormatV05

    return {"0.4": FormatV04, "0.5": FormatV05}.get(version[:3], CurrentFormat)()


def _level_scale(transformations: Any, ndim: int) -> list[float]:
    """The product of the ``scale`` transforms of level 0 (one per axis)."""
    scale = [1.0] * ndim
    levels = transformations or []
    for transform in levels[0] if levels else []:
        if transform.get("type") == "scale" and len(transform.get("scale", [])) == ndim:
            scale = [a * float(b) for a, b in zip(scale, transform["scale"], strict=True)]
    return scale


def _micrometres(value: float, unit: str | None) -> float | None:
    """A scale in micrometres; a scale of exactly 1 with no unit is "not said" (None)."""
    if unit is None:
        return None if value == 1.0 else float(value)  # NGFF writers that omit the unit mean micrometres
    factor = _UNIT_TO_UM.get(str(unit).lower())
    if factor is None:
        logger.warning("unknown OME-Zarr unit %r; pixel size %s taken as micrometres", unit, value)
        factor = 1.0
    return float(value) * factor if value > 0 else None


# --- writing labels ----------------------------------------------------------------------------


def pyramid_levels(shape: Sequence[int], smallest: int = 256) -> int:
    """How many times to halve Y and X (nearest neighbour) until the image is no larger than ``smallest``."""
    levels, y, x = 0, int(shape[-2]), int(shape[-1])
    while max(y, x) > smallest and levels < 10:
        y, x, levels = (y + 1) // 2, (x + 1) // 2, levels + 1
    return levels


def write_ome_zarr_labels(
    destination: str | os.PathLike,
    labels: Any,
    *,
    axes: str,
    pixel_sizes: Any = None,
    name: str | None = None,
    overwrite: bool = False,
    chunks: Sequence[int] | None = None,
    ngff_version: str | None = None,
) -> Path:
    """Write labels as an NGFF labels image with multiscale levels, chunk by chunk.

    Parameters
    ----------
    destination
        An existing OME-Zarr image: the labels go to its ``labels/<name>`` group (``name``
        required). Any other path (``masks/cells_labels.ome.zarr``): a labels image of its own.
    labels
        Unsigned integer labels, numpy or dask (a dask array is computed chunk by chunk while
        writing: nothing is held whole), with dimensions ``axes``.
    axes
        Letters of ``labels``' dimensions, a subset of ``TZYX`` in that order (``"YX"``, ``"ZYX"``).
    pixel_sizes
        (Z, Y, X) in micrometres, entries may be None.
    overwrite
        Replace a labels image of that name (or the file at ``destination``).
    chunks
        Chunk shape on disk (default 1 along T/Z, up to 1024 along Y and X).
    ngff_version
        ``"0.4"`` (zarr v2) or ``"0.5"`` (zarr v3); by default the source's, else 0.5.

    Returns
    -------
    Path
        The labels image's folder.

    Raises
    ------
    FileExistsError
        The labels image exists and ``overwrite`` is False.
    ValueError
        Bad axes or non-integer labels.
    """
    import zarr
    from ome_zarr.writer import add_metadata, get_metadata, write_label_metadata, write_labels

    destination = Path(destination)
    axes = axes.lower()
    if len(axes) != labels.ndim or not set(axes) <= set("tzyx") or axes[-2:] != "yx":
        raise ValueError(
            f"axes {axes!r} do not describe labels of shape {tuple(labels.shape)} (a subset of 'tzyx' ending in 'yx')"
        )
    if not np.issubdtype(np.dtype(labels.dtype), np.integer) and np.dtype(labels.dtype) != bool:
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    into_source = destination.is_dir() and "multiscales" in _ngff_metadata(destination) and name is not None
    if into_source:
        source_version = str(_ngff_metadata(destination).get("version") or "")
        if not source_version:
            source_version = str(_ngff_metadata(destination)["multiscales"][0].get("version") or "0.4")
        ngff_version = ngff_version or ("0.5" if source_version.startswith("0.5") else "0.4")
        target = destination / "labels" / name
    else:
        ngff_version = ngff_version or "0.5"
        target = destination
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True (or --overwrite) to replace it")
    fmt = _format(ngff_version)

    array = labels if isinstance(labels, da.Array) else da.from_array(np.asarray(labels))
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if chunks is None:
        chunks = tuple(1 if a in "tz" else min(1024, int(n)) for a, n in zip(axes, array.shape, strict=True))
    array = array.rechunk(tuple(chunks))
    sizes = dict(zip("zyx", pixel_sizes or (None, None, None), strict=True))
    scale = {a: float(sizes.get(a) or 1.0) for a in axes if a != "t"}
    units = {a: "micrometer" for a in axes if a != "t" and sizes.get(a)}
    n_levels = pyramid_levels(array.shape)
    scale_factors = [{a: (2**i if a in "yx" else 1) for a in axes} for i in range(1, n_levels + 1)]
    label_name = name or destination.name.split(".")[0]

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        scratch = zarr.open_group(str(temporary / "root.zarr"), mode="w", zarr_format=fmt.zarr_format)
        write_labels(
            array,
            scratch,
            name=label_name,
            scaler=None,
            scale_factors=scale_factors,
            axes=axes,
            scale=scale,
            axes_units=units or None,
            fmt=fmt,
            storage_options={"chunks": tuple(chunks)},
        )
        written = temporary / "root.zarr" / "labels" / label_name
        if target.exists():
            shutil.rmtree(target)
        os.replace(written, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    if into_source:
        # the labels image is complete: only now does the source list it
        labels_group = zarr.open_group(str(destination / "labels"), mode="a", zarr_format=fmt.zarr_format)
        listed = list(get_metadata(labels_group).get("labels", []))
        if name in listed:
            add_metadata(labels_group, {"labels": [n for n in listed if n != name]}, fmt=fmt)
        write_label_metadata(labels_group, name, fmt=fmt, source={"image": "../../"})
    return target


# --- prediction straight to OME-Zarr labels -----------------------------------------------------


def labels_target(destination: str | os.PathLike, name: str | None) -> Path:
    """Where :func:`write_ome_zarr_labels` puts labels: ``SOURCE/labels/<name>`` or ``destination`` itself."""
    destination = Path(destination)
    if name is not None and destination.is_dir() and "multiscales" in _ngff_metadata(destination):
        return destination / "labels" / name
    return destination


def predict_to_ome_zarr(
    model: Any,
    image: Any,
    destination: str | os.PathLike,
    *,
    name: str | None = None,
    overwrite: bool = False,
    threshold: float = 0.5,
    progress: Any = None,
    cancel: Any = None,
    **options: Any,
) -> Path:
    """Predict ``image`` with ``model`` and write the labels as OME-Zarr, tile by tile.

    A mask (no ``instances``, splitting, size filters or hole filling: options that need whole objects)
    never exists in memory whole: the probabilities stream tile by tile into a temporary zarr
    store beside the destination, and the labels pyramid is computed from it chunk by chunk
    while it is written. With those options the labels are made in memory by
    :func:`segtune.core.predict.predict` and then written the same way.

    Parameters
    ----------
    model, image
        As in :func:`segtune.core.predict.predict` (``image`` typically from ``open_image``).
    destination, name
        As in :func:`write_ome_zarr_labels`: an OME-Zarr source and the name of its new labels
        image, or the path of a labels image of its own.
    overwrite
        Replace labels of that name.
    threshold, options, progress, cancel
        Passed to :func:`segtune.core.predict.predict`.

    Returns
    -------
    Path
        The labels image written.
    """
    from segtune.core.postprocess import mask_from_probabilities
    from segtune.core.predict import ObjectOptions, predict
    from segtune.core.predict.files import storage_dtype

    target = labels_target(destination, name)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True (or --overwrite) to replace it")
    pixel_sizes = tuple(getattr(image, "physical_pixel_sizes", None) or (None, None, None))
    common = {"threshold": threshold, "progress": progress, "cancel": cancel}
    objects = options.get("objects") or ObjectOptions()
    if options.get("instances") or objects.whole_object_options():
        result = predict(model, image, **common, **options)
        if result.labels is None:
            raise ValueError(f"the model's head {result.head!r} gives no labels to write")
        labels = np.asarray(result.labels)
        narrowest = (
            np.uint16 if options.get("instances") else np.uint8
        )  # instance labels as the OME-TIFF output has them
        labels = labels.astype(storage_dtype(int(labels.max(initial=0)), narrowest))
        labels, axes = _squeeze_tz(da.from_array(labels, chunks=(1, 1, *labels.shape[2:])))
        return write_ome_zarr_labels(
            destination, labels, axes=axes, pixel_sizes=pixel_sizes, name=name, overwrite=overwrite
        )

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".probabilities", dir=target.parent))
    try:
        result = predict(model, image, labels=False, out=scratch / "probabilities.zarr", **common, **options)
        if result.head == "image":
            raise ValueError("the model's head 'image' gives no labels to write")
        probabilities = result.probabilities
        if isinstance(probabilities, da.Array):
            pass
        elif hasattr(probabilities, "chunks") and not isinstance(probabilities, np.ndarray):
            probabilities = da.from_zarr(probabilities)
        else:
            probabilities = da.from_array(np.asarray(probabilities), chunks=(1, -1, 1, 1024, 1024))
        probabilities = probabilities.rechunk({1: -1})
        n_classes = int(probabilities.shape[1])
        dtype = np.uint8 if result.head != "semantic" or n_classes <= 256 else np.uint16
        head = result.head

        def to_mask(block: np.ndarray) -> np.ndarray:
            return np.stack([mask_from_probabilities(b, head, threshold) for b in block]).astype(dtype)

        mask = probabilities.map_blocks(to_mask, drop_axis=1, dtype=dtype)
        labels, axes = _squeeze_tz(mask)
        return write_ome_zarr_labels(
            destination, labels, axes=axes, pixel_sizes=pixel_sizes, name=name, overwrite=overwrite
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _squeeze_tz(labels: da.Array) -> tuple[da.Array, str]:
    """``(T, Z, Y, X)`` without length-1 T and Z, and the axes left."""
    keep = [i for i, n in enumerate(labels.shape) if i >= 2 or n > 1]
    index = tuple(slice(None) if i in keep else 0 for i in range(4))
    return labels[index], "".join("tzyx"[i] for i in keep)
