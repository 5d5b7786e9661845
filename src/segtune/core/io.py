"""Reading microscopy images lazily as TCZYX dask arrays, and writing label images safely.

CZI goes through bioio + bioio-czi (mosaics are stitched), TIFF and OME-TIFF through tifffile's
zarr store (nothing is read until a chunk is computed), PNG/JPEG through imageio. Every reader
returns the same :class:`ImageData`; every failure to read is an :class:`ImageReadError` that
names the file and says what is wrong.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import dask.array as da
import numpy as np

from segtune.core.files import atomic_write, check_output, ome_metadata

logger = logging.getLogger(__name__)

__all__ = [
    "ImageData",
    "ImageReadError",
    "PhysicalPixelSizes",
    "SUPPORTED_EXTENSIONS",
    "open_image",
    "read_labels",
    "write_labels",
]

DIMS = "TCZYX"
TIFF_EXTENSIONS = (".ome.tif", ".ome.tiff", ".tif", ".tiff")
PLAIN_EXTENSIONS = (".png", ".jpg", ".jpeg")
SUPPORTED_EXTENSIONS = (".czi", *TIFF_EXTENSIONS, *PLAIN_EXTENSIONS)
# the Software tag of every label TIFF segtune writes: how the napari reader knows them as labels
LABELS_SOFTWARE = "segtune"


class ImageReadError(Exception):
    """A file could not be read as an image. The message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read {self.path}: {reason}")


class PhysicalPixelSizes(NamedTuple):
    """Pixel sizes in micrometres along Z, Y, X; None where the file does not say."""

    Z: float | None = None
    Y: float | None = None
    X: float | None = None


@dataclass
class ImageData:
    """An opened image: a lazy TCZYX array and what the file says about it.

    Attributes
    ----------
    data
        dask array with dims ``TCZYX`` (RGB samples are channels). Nothing is read from disk
        until part of it is computed.
    physical_pixel_sizes
        (Z, Y, X) in micrometres, None where unknown.
    channel_names
        One name per channel. RGB samples of a named channel are ``"name (red)"``,
        ``"name (green)"``, ``"name (blue)"`` (see :func:`sample_group`).
    scenes
        Names of the scenes (CZI scenes, TIFF series) in the file; ``scene`` is the one opened.
    """

    path: Path
    data: da.Array
    physical_pixel_sizes: PhysicalPixelSizes
    channel_names: list[str]
    scenes: list[str]
    scene: str
    metadata: dict[str, Any] = field(default_factory=dict)
    """What else the file says: ``samples`` (3 or 4 when each channel is an RGB(A) colour image,
    its samples consecutive channels), ``axes`` (a TIFF's own axes), ``software`` (a TIFF's
    Software tag: ``"segtune"`` for label files segtune wrote)."""

    dims = DIMS

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def sizes(self) -> dict[str, int]:
        """``{"T": 3, "C": 2, "Z": 5, "Y": 170, "X": 240}``."""
        return dict(zip(DIMS, self.shape, strict=True))

    def plane(self, t: int = 0, c: int = 0, z: int = 0) -> np.ndarray:
        """Read one YX plane into memory."""
        return np.asarray(self.data[t, c, z].compute())


def open_image(path: str | os.PathLike, scene: int | str | None = None) -> ImageData:
    """Open an image file lazily as a TCZYX dask array with its metadata.

    Parameters
    ----------
    path
        A ``.czi``, ``.tif``/``.tiff``/``.ome.tif`` or ``.png``/``.jpg`` file, or an OME-Zarr
        folder (NGFF v0.4/v0.5; its full-resolution level, through ome-zarr-py).
    scene
        Scene (CZI) or series (TIFF) to open, by index or name; the first when None.

    Returns
    -------
    ImageData

    Raises
    ------
    ImageReadError
        The file is missing, has an unsupported extension, is truncated or corrupt, or has
        no such scene. The message names the file.

    Examples
    --------
    >>> img = open_image("cells.czi")                    # doctest: +SKIP
    >>> img.sizes(), img.physical_pixel_sizes            # doctest: +SKIP
    ({'T': 3, 'C': 2, 'Z': 5, 'Y': 170, 'X': 240}, PhysicalPixelSizes(Z=0.32, Y=0.09, X=0.09))
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file")
    from segtune.core import omezarr

    if omezarr.is_ome_zarr(path):
        try:
            return omezarr.open_ome_zarr(path, scene)
        except ImageReadError:
            raise
        except Exception as e:
            raise ImageReadError(path, f"not a readable OME-Zarr ({type(e).__name__}: {e})") from e
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    kind = _kind(path)
    if kind is None:
        raise ImageReadError(
            path,
            f"unsupported extension {''.join(path.suffixes) or '(none)'!r}; "
            f"segtune reads {', '.join(SUPPORTED_EXTENSIONS)}",
        )
    if path.stat().st_size == 0:
        raise ImageReadError(path, "the file is empty")
    reader = {"czi": _open_czi, "tiff": _open_tiff, "plain": _open_plain}[kind]
    try:
        return reader(path, scene)
    except ImageReadError:
        raise
    except Exception as e:  # every reader library has its own exceptions; name the file
        raise ImageReadError(path, f"{type(e).__name__}: {e}".strip()) from e


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".czi"):
        return "czi"
    if name.endswith(TIFF_EXTENSIONS):
        return "tiff"
    if name.endswith(PLAIN_EXTENSIONS):
        return "plain"
    return None


def _pick_scene(path: Path, scenes: Sequence[str], scene: int | str | None) -> int:
    if scene is None:
        return 0
    if isinstance(scene, (int, np.integer)):
        if not 0 <= int(scene) < len(scenes):
            raise ImageReadError(
                path, f"scene {scene} does not exist; the file has {len(scenes)} scene(s): {list(scenes)}"
            )
        return int(scene)
    if scene in scenes:
        return list(scenes).index(scene)
    raise ImageReadError(path, f"scene {scene!r} does not exist; the file has scenes {list(scenes)}")


# --- CZI -------------------------------------------------------------------------------------


def _open_czi(path: Path, scene: int | str | None) -> ImageData:
    import bioio_czi
    from bioio import BioImage

    _check_czi_complete(path)
    try:
        image = BioImage(path, reader=bioio_czi.Reader)
        scenes = [str(s) for s in image.scenes]
    except Exception as e:
        raise ImageReadError(path, f"not a readable CZI file ({type(e).__name__}: {e})") from e
    index = _pick_scene(path, scenes, scene)
    image.set_scene(index)
    dims = image.dims.order
    data = guarded_array(path, image.dask_data, dims)
    samples = 1
    if "S" in dims:  # RGB(A) samples become channels
        samples = int(data.shape[dims.index("S")])
        data, dims = _samples_to_channels(data, dims)
    if dims != DIMS:
        raise ImageReadError(path, f"unexpected dimension order {dims!r} from the CZI reader")
    sizes = image.physical_pixel_sizes
    channel_names = [str(c) for c in (image.channel_names or [])]
    if samples > 1:
        channel_names = _sample_names(channel_names, samples, data.shape[1])
    elif len(channel_names) != data.shape[1]:
        channel_names = _default_channel_names(data.shape[1])
    return ImageData(
        path=path,
        data=data,
        physical_pixel_sizes=PhysicalPixelSizes(*(_positive_or_none(s) for s in (sizes.Z, sizes.Y, sizes.X))),
        channel_names=channel_names,
        scenes=scenes,
        scene=scenes[index],
        metadata={"samples": samples},
    )


def _check_czi_complete(path: Path) -> None:
    """Check the CZI segment structure: every image subblock must lie inside the file.

    The CZI reader opens a truncated file happily and fails only when a missing plane is
    read; walking the subblock directory (ZISRAW format: file header, then a directory of
    entries with the file position of each subblock) finds that at open time, cheaply.
    """
    import struct

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.read(32 + 92)
        if len(header) < 124 or not header.startswith(b"ZISRAWFILE"):
            raise ImageReadError(path, "not a CZI file (no ZISRAWFILE header)")
        directory_position = struct.unpack_from("<q", header, 32 + 8 + 8 + 32 + 4)[0]
        if not 0 < directory_position < size - 32 - 128:
            raise ImageReadError(path, "the file is truncated or corrupt: its subblock directory is missing")
        f.seek(directory_position)
        segment = f.read(32 + 128)
        if not segment.startswith(b"ZISRAWDIRECTORY"):
            raise ImageReadError(path, "the file is truncated or corrupt: bad subblock directory")
        (count,) = struct.unpack_from("<i", segment, 32)
        if not 0 <= count <= (size - directory_position) // 32:  # an entry takes at least 32 bytes
            raise ImageReadError(path, f"the file is corrupt: its directory claims {count} subblocks")
        # an entry is 32 bytes plus 20 per dimension; 16 dimensions bound every real file
        entries = f.read(count * (32 + 20 * 16))
        offset, last = 0, 0
        for _ in range(count):
            if offset + 32 > len(entries):
                raise ImageReadError(path, "the file is truncated or corrupt: subblock directory cut short")
            position = struct.unpack_from("<q", entries, offset + 6)[0]
            dimensions = struct.unpack_from("<i", entries, offset + 28)[0]
            last = max(last, position)
            offset += 32 + 20 * dimensions
        if last:
            f.seek(last)
            block = f.read(32)
            if len(block) < 32 or not block.startswith(b"ZISRAWSUBBLOCK"):
                raise ImageReadError(path, "the file is truncated or corrupt: an image subblock is missing")
            allocated = struct.unpack_from("<q", block, 16)[0]
            if last + 32 + allocated > size:
                raise ImageReadError(
                    path, f"the file is truncated or corrupt: image data runs to byte {last + 32 + allocated} but the file has {size}"
                )


class _GuardedReads:
    """An array-like whose reads turn any decoder error into :class:`ImageReadError`.

    Files that open fine can still hold corrupt data (a tile whose compressed bytes are
    damaged, a CZI subblock that does not decode); the error appears only when those pixels
    are read, deep inside a dask computation. Wrapping the source of every dask block here
    makes that error name the file, the block and the reason wherever the array is computed.
    """

    def __init__(self, path: Path, source: Any, axes: str) -> None:
        self.path, self.source = path, source
        self.shape = tuple(int(n) for n in source.shape)
        self.dtype = np.dtype(source.dtype)
        self.ndim = len(self.shape)
        self.axes = list(axes) if len(axes) == self.ndim else [f"axis {i}" for i in range(self.ndim)]
        # dask names the blocks by this token: the file's state and the reader's array
        stat = path.stat()
        source_token = source.name if isinstance(source, da.Array) else uuid.uuid4().hex
        self._token = (str(path), stat.st_size, stat.st_mtime_ns, source_token)

    def __dask_tokenize__(self) -> Any:
        return self._token

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            block = self.source[index]
            if isinstance(block, da.Array):  # one block of the reader's own dask array, read here
                block = block.compute(scheduler="synchronous")
            return np.asarray(block)
        except (ImageReadError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:
            reason = f"{type(e).__name__}: {e}".strip().rstrip(":")
            raise ImageReadError(
                self.path, f"the pixel data is corrupt at {self._where(index)} ({reason})"
            ) from e

    def _where(self, index: Any) -> str:
        index = index if isinstance(index, tuple) else (index,)
        parts = []
        for axis, size, item in zip(self.axes, self.shape, index, strict=False):
            if isinstance(item, slice):
                start, stop, _ = item.indices(size)
                parts.append(f"{axis} {start}" if stop - start == 1 else f"{axis} {start}-{stop - 1}")
            else:
                parts.append(f"{axis} {item}")
        return ", ".join(parts) or "the first block"


def guarded_array(path: Path, source: Any, axes: str) -> da.Array:
    """``source`` (a zarr or dask array) as a dask array with the same chunks whose reads are guarded."""
    chunks = source.chunks if isinstance(source, da.Array) else getattr(source, "chunks", "auto")
    return da.from_array(_GuardedReads(path, source, axes), chunks=chunks, asarray=True, fancy=False)


SAMPLE_NAMES = {3: ("red", "green", "blue"), 4: ("red", "green", "blue", "alpha")}


def _sample_names(names: list[str], samples: int, n_channels: int) -> list[str]:
    """Channel names once RGB(A) samples are channels: ``Bright`` -> ``Bright (red)``, ... .

    A single colour channel without a name of its own (bioio calls it ``Channel:0:0``) is
    plain ``red``, ``green``, ``blue``.
    """
    suffixes = SAMPLE_NAMES.get(samples) or tuple(f"sample {i}" for i in range(samples))
    if len(names) * samples != n_channels:
        names = _default_channel_names(n_channels // samples)
    if len(names) == 1 and re.fullmatch(r"Channel[: ]?\d+(:\d+)*", names[0]):
        return list(suffixes)
    return [f"{name} ({suffix})" for name in names for suffix in suffixes]


def sample_group(names: Sequence[str], name: str) -> list[int]:
    """The channels holding the RGB(A) samples of channel ``name`` (``Bright`` -> the indices of
    ``Bright (red)``, ``Bright (green)``, ``Bright (blue)``; ``RGB`` -> ``red``, ``green``,
    ``blue``); empty when there are none."""
    if name.lower() == "rgb" and list(names[:3]) == list(SAMPLE_NAMES[3]):
        return [0, 1, 2]  # a single colour channel without a name of its own
    suffixes = {f"{name} ({s})" for group in SAMPLE_NAMES.values() for s in group}
    return [i for i, n in enumerate(names) if n in suffixes]


def _samples_to_channels(data: da.Array, dims: str) -> tuple[da.Array, str]:
    """Fold an ``S`` (samples) axis into ``C``: an RGB image with C=1 becomes C=3."""
    s_axis, c_axis = dims.index("S"), dims.index("C")
    data = da.moveaxis(data, s_axis, c_axis + 1)
    order = [d for d in dims if d != "S"]
    shape = list(data.shape)
    shape[c_axis] = shape[c_axis] * shape[c_axis + 1]
    del shape[c_axis + 1]
    return data.reshape(shape), "".join(order)


# --- TIFF / OME-TIFF -------------------------------------------------------------------------


def _open_tiff(path: Path, scene: int | str | None) -> ImageData:
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
        index = _pick_scene(path, scenes, scene)
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

    z = ome.get("Z") or _positive_or_none(imagej.get("spacing"))
    y = ome.get("Y") or (resolution[0] if resolution else None)
    x = ome.get("X") or (resolution[1] if resolution else None)
    channel_names = ome.get("channels") or []
    samples = int(shape[axes.index("S")]) if "S" in axes and "C" not in axes else 1
    if len(channel_names) != data.shape[1]:
        labels = imagej.get("Labels")
        channel_names = _default_channel_names(data.shape[1])
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
        raise ImageReadError(path, f"its image data is compressed with {name}, which cannot be decoded here ({e.args[0]})") from None


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
            out[axis] = _positive_or_none(float(value) * _UNIT_TO_UM.get(unit, 1.0))
    names = [c.get("Name") or c.get("ID") or "" for c in pixels.findall(f"{prefix}Channel", ns)]
    if names and all(names):
        out["channels"] = names
    return out


_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


# --- PNG / JPEG ------------------------------------------------------------------------------


def _open_plain(path: Path, scene: int | str | None) -> ImageData:
    import imageio.v3 as iio

    _pick_scene(path, ["Image 0"], scene)
    with open(path, "rb") as f:
        start = f.read(8)
    if not start.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):  # the PNG and JPEG signatures
        raise ImageReadError(path, f"not a PNG or JPEG file (it starts with {start[:8]!r})")
    try:
        array = np.asarray(iio.imread(path))
    except Exception as e:
        raise ImageReadError(path, f"not a readable {path.suffix} image ({type(e).__name__}: {e})") from e
    if array.ndim == 2:
        array = array[np.newaxis]
    elif array.ndim == 3:
        array = np.moveaxis(array, -1, 0)  # samples (RGB/RGBA) become channels
    else:
        raise ImageReadError(path, f"unexpected image shape {array.shape}")
    data = da.from_array(array[np.newaxis, :, np.newaxis], chunks=-1)
    samples = array.shape[0] if array.ndim == 3 and array.shape[0] in SAMPLE_NAMES else 1
    return ImageData(
        path=path,
        data=data,
        physical_pixel_sizes=PhysicalPixelSizes(),
        channel_names=list(SAMPLE_NAMES[samples]) if samples > 1 else _default_channel_names(array.shape[0]),
        scenes=["Image 0"],
        scene="Image 0",
        metadata={"samples": samples},
    )


def _default_channel_names(n: int) -> list[str]:
    return [f"Channel {i}" for i in range(n)]


def _positive_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


# --- labels ----------------------------------------------------------------------------------


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read a label image into memory, squeezed to its spatial (and time) axes.

    A label file written by :func:`write_labels` reads back identical. Raises
    :class:`ImageReadError` like :func:`open_image`.
    """
    image = open_image(path)
    data = image.data
    if data.shape[1] != 1:
        raise ImageReadError(path, f"a label image must have one channel, this one has {data.shape[1]}")
    return np.asarray(data[:, 0].compute()).squeeze()


def write_labels(
    path: str | os.PathLike,
    labels: np.ndarray,
    pixel_sizes: PhysicalPixelSizes | Sequence[float | None] | None = None,
    overwrite: bool = False,
    *,
    axes: str | None = None,
    dtype: np.dtype | type | None = None,
) -> Path:
    """Write a label image as OME-TIFF, atomically, never replacing a file unless asked.

    Parameters
    ----------
    path
        Destination ``.tif``/``.tiff``/``.ome.tif``.
    labels
        Integer array with spatial axes last: YX, ZYX or TZYX (``axes`` overrides the guess).
        Stored as uint8 when it fits, else uint16, else uint32.
    pixel_sizes
        (Z, Y, X) in micrometres, entries may be None.
    overwrite
        Replace an existing file. Without it an existing file raises :class:`FileExistsError`.
    axes
        The axes of ``labels`` (``"YX"``, ``"ZYX"``, ``"TZYX"``, ...); guessed from its rank.
    dtype
        Store in this unsigned integer type (e.g. uint16 for instance labels, whatever their
        count); by default the smallest of uint8/16/32 that holds the largest label.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False (also when another writer creates it first).
    OutputError
        ``path`` is a folder, or the disk refused (read-only, permission, full); an ``OSError``.
    ValueError
        ``labels`` is empty, not an integer or boolean array, or has an unsupported number of axes.
    """
    import tifffile

    path = Path(path)
    if not path.name.lower().endswith(TIFF_EXTENSIONS):
        raise ValueError(f"label file {path} must end in .tif, .tiff or .ome.tif")
    check_output(path, overwrite)
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError(f"labels are empty (shape {labels.shape}); there is nothing to write to {path}")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer or boolean array, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must not be negative (minimum is {labels.min()})")
    if axes is None:
        axes = {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TCZYX"}.get(labels.ndim)
        if axes is None:
            raise ValueError(f"labels must have 2 to 5 axes (YX ... TCZYX), got shape {labels.shape}")
    if len(axes) != labels.ndim:
        raise ValueError(f"axes {axes!r} do not match labels of shape {labels.shape}")
    top = int(labels.max()) if labels.size else 0
    if dtype is None:
        dtype = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.uint32
    dtype = np.dtype(dtype)
    if dtype.kind != "u" or top > np.iinfo(dtype).max:
        raise ValueError(f"labels up to {top} cannot be stored as {dtype}; use an unsigned type that holds them")
    labels = labels.astype(dtype, copy=False)

    metadata = ome_metadata(axes, pixel_sizes)
    return atomic_write(
        path,
        lambda temporary: tifffile.imwrite(temporary, labels, ome=True, metadata=metadata, compression="zlib", software=LABELS_SOFTWARE),
        overwrite=overwrite,
    )


def output_name(input_path: str | os.PathLike, suffix: str = "_labels", extension: str = ".tif") -> str:
    """``cells.ome.tif`` -> ``cells_labels.tif``: the name outputs take after their input."""
    name = Path(input_path).name
    stem = re.sub(r"(\.ome)?\.(tiff?|czi|png|jpe?g|zarr)$", "", name, flags=re.IGNORECASE)
    return f"{stem}{suffix}{extension}"
