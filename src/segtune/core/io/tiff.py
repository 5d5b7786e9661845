"""Reading TIFF and OME-TIFF lazily through tifffile's zarr store: axes to TCZYX, pixel sizes from OME-XML or
the resolution tags, checks for truncated files and missing codecs."""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from segtune.core.io.image import (
    DIMS,
    SAMPLE_NAMES,
    ImageData,
    ImageReadError,
    PhysicalPixelSizes,
    default_channel_names,
    guarded_array,
    pick_scene,
    positive_or_none,
)

__all__ = ["open_tiff"]


def open_tiff(path: Path, scene: int | str | None) -> ImageData:
    import tifffile
    import zarr

    problems = _CollectProblems()
    tiff_logger = logging.getLogger("tifffile")
    tiff_logger.addHandler(problems)
    propagate, tiff_logger.propagate = tiff_logger.propagate, False  # we report it ourselves
    try:
        tif = tifffile.TiffFile(path)
    except Exception as e:
        tiff_logger.removeHandler(problems)
        tiff_logger.propagate = propagate
        raise ImageReadError(path, f"not a readable TIFF file ({type(e).__name__}: {e})") from e
    try:
        series_list = tif.series
        if not series_list:
            raise ImageReadError(path, "the TIFF file holds no image data")
        scenes = [s.name or f"Series {i}" for i, s in enumerate(series_list)]
        index = pick_scene(path, scenes, scene)
        series = series_list[index]
        _check_tiff_complete(path, series, problems.messages)
        _check_tiff_codec(path, series)
        axes = series.axes
        shape = series.shape
        software = str(series.keyframe.software or "")
        ome = _parse_ome(tif.ome_metadata, index) if tif.is_ome else {}
        imagej = tif.imagej_metadata or {}
        resolution = _tiff_resolution(series)
    finally:
        tiff_logger.removeHandler(problems)
        tiff_logger.propagate = propagate
        tif.close()

    store = tifffile.imread(path, aszarr=True, series=index, level=0)
    array = zarr.open(store, mode="r")
    data = guarded_array(path, array, axes)
    if data.shape != tuple(shape):
        data = data.reshape(shape)
    data = _to_tczyx(path, data, axes)

    z = ome.get("Z") or positive_or_none(imagej.get("spacing"))
    y = ome.get("Y") or (resolution[0] if resolution else None)
    x = ome.get("X") or (resolution[1] if resolution else None)
    channel_names = ome.get("channels") or []
    samples = int(shape[axes.index("S")]) if "S" in axes and "C" not in axes else 1
    if len(channel_names) != data.shape[1]:
        labels = imagej.get("Labels")
        channel_names = default_channel_names(data.shape[1])
        if isinstance(labels, list) and len(labels) == data.shape[1]:
            channel_names = [str(s) for s in labels]
        elif samples in SAMPLE_NAMES and data.shape[1] == samples:
            channel_names = list(SAMPLE_NAMES[samples])
    return ImageData(
        path=path,
        data=data,
        physical_pixel_sizes=PhysicalPixelSizes(z, y, x),
        channel_names=channel_names,
        scenes=scenes,
        scene=scenes[index],
        metadata={"axes": axes, "samples": samples if samples in SAMPLE_NAMES else 1, "software": software},
    )


def _check_tiff_complete(path: Path, series: Any, problems: list[str]) -> None:
    """A truncated TIFF often still opens: check that the series' data lies inside the file."""
    if problems:  # tifffile logged a broken page chain or unreadable tags while opening
        raise ImageReadError(path, f"the file is truncated or corrupt ({problems[0]})")
    size = os.path.getsize(path)
    if series.dataoffset is not None:  # contiguous data: one extent to check
        end = int(series.dataoffset) + int(series.nbytes)
    else:
        pages = series.pages
        expected = int(np.prod(series.shape)) // max(1, int(np.prod(pages[0].shape)))
        if len(pages) < expected or pages[-1] is None:
            raise ImageReadError(
                path, f"the file is truncated or corrupt: {len(pages)} of {expected} image pages found"
            )
        end = 0
        for page in (pages[0], pages[-1]):
            offsets = getattr(page, "dataoffsets", ()) or ()
            counts = getattr(page, "databytecounts", ()) or ()
            end = max([end, *(o + c for o, c in zip(offsets, counts, strict=False))])
    if end > size:
        raise ImageReadError(
            path, f"the file is truncated or corrupt: image data runs to byte {end} but the file has {size}"
        )


def _check_tiff_codec(path: Path, series: Any) -> None:
    """Refuse at open time a TIFF whose compression cannot be decoded (the data is read lazily,
    so without this the failure would come later, from inside the zarr store, without the file name)."""
    from tifffile import TIFF

    page = series.keyframe
    compression = getattr(page, "compression", 1)
    if compression == 1:
        return
    try:
        TIFF.DECOMPRESSORS[compression]
    except KeyError as e:
        name = getattr(compression, "name", str(compression))
        raise ImageReadError(
            path, f"its image data is compressed with {name}, which cannot be decoded here ({e.args[0]})"
        ) from None


class _CollectProblems(logging.Handler):
    """Collects what tifffile logs about broken files (it logs and carries on)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if re.search(r"invalid|corrupt|truncat|TiffFileError", message):
            self.messages.append(message.strip())


_AXIS_MAP = {"T": "T", "C": "C", "S": "S", "Z": "Z", "Y": "Y", "X": "X"}


def _to_tczyx(path: Path, data: da.Array, axes: str) -> da.Array:
    """Reorder tifffile's axes (e.g. ``TZCYXS``, ``QYX``, ``IYX``) into TCZYX."""
    axes = axes.upper()
    letters = list(axes)
    # unknown stacking axes (Q, I, R, E, ...) become Z, then T: a plain multi-page TIFF is a stack
    for i, a in enumerate(letters):
        if a not in _AXIS_MAP:
            if "Z" not in letters:
                letters[i] = "Z"
            elif "T" not in letters:
                letters[i] = "T"
            else:
                raise ImageReadError(path, f"cannot interpret TIFF axes {axes!r}")
    if "S" in letters:
        if "C" in letters:
            c, s = letters.index("C"), letters.index("S")
            data = da.moveaxis(data, s, c + 1)
            moved = letters.pop(s)
            letters.insert(c + 1, moved)
            shape = list(data.shape)
            ci = letters.index("C")
            shape[ci : ci + 2] = [shape[ci] * shape[ci + 1]]
            data = data.reshape(shape)
            letters.remove("S")
        else:
            letters[letters.index("S")] = "C"
    if len(set(letters)) != len(letters):
        raise ImageReadError(path, f"cannot interpret TIFF axes {axes!r} (an axis repeats)")
    for a in DIMS:
        if a not in letters:
            data = data[np.newaxis]
            letters.insert(0, a)
    order = [letters.index(a) for a in DIMS]
    return data.transpose(order)


def _tiff_resolution(series: Any) -> tuple[float, float] | None:
    """Pixel size (Y, X) in micrometres from TIFF resolution tags, if they say micron/cm/inch."""
    try:
        page = series.pages[0]
        tags = page.tags
        xres, yres = tags.get("XResolution"), tags.get("YResolution")
        if xres is None or yres is None:
            return None
        unit = tags.get("ResolutionUnit")
        unit = int(unit.value) if unit is not None else 2

        def size(value: Any) -> float | None:
            num, den = value if isinstance(value, tuple) else (value, 1)
            if not num or not den:
                return None
            return den / num

        sy, sx = size(yres.value), size(xres.value)
        if sy is None or sx is None:
            return None
        description = page.description or ""
        if "unit=micron" in description or "unit=\\u00B5m" in description or "unit=um" in description:
            scale = 1.0  # ImageJ stores pixels per micron with ResolutionUnit NONE
        elif unit == 3:  # centimetre
            scale = 1e4
        elif unit == 2 and (sy, sx) != (1.0, 1.0) and "ImageJ" not in description:
            scale = 25400.0  # inch
        else:
            return None
        return sy * scale, sx * scale
    except Exception:  # resolution tags are advisory; never fail a read on them
        return None


def _parse_ome(xml: str | None, index: int) -> dict[str, Any]:
    if not xml:
        return {}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    ns = {"ome": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}
    prefix = "ome:" if ns else ""
    images = root.findall(f"{prefix}Image", ns)
    if not images or index >= len(images):
        return {}
    pixels = images[index].find(f"{prefix}Pixels", ns)
    if pixels is None:
        return {}
    out: dict[str, Any] = {}
    for axis in "ZYX":
        value = pixels.get(f"PhysicalSize{axis}")
        unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
        if value is not None:
            out[axis] = positive_or_none(float(value) * _UNIT_TO_UM.get(unit, 1.0))
    names = [c.get("Name") or c.get("ID") or "" for c in pixels.findall(f"{prefix}Channel", ns)]
    if names and all(names):
        out["channels"] = names
    return out


_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
