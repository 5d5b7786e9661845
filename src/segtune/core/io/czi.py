"""Reading CZI files (bioio + bioio-czi; mosaics stitched), with a check for truncated files."""

from __future__ import annotations

import os
from pathlib import Path

from segtune.core.io.image import (
    DIMS,
    ImageData,
    ImageReadError,
    PhysicalPixelSizes,
    default_channel_names,
    guarded_array,
    pick_scene,
    positive_or_none,
    sample_names,
    samples_to_channels,
)

__all__ = ["open_czi"]


def open_czi(path: Path, scene: int | str | None) -> ImageData:
    import bioio_czi
    from bioio import BioImage

    _check_czi_complete(path)
    try:
        image = BioImage(path, reader=bioio_czi.Reader)
        scenes = [str(s) for s in image.scenes]
    except Exception as e:
        raise ImageReadError(path, f"not a readable CZI file ({type(e).__name__}: {e})") from e
    index = pick_scene(path, scenes, scene)
    image.set_scene(index)
    dims = image.dims.order
    data = guarded_array(path, image.dask_data, dims)
    samples = 1
    if "S" in dims:  # RGB(A) samples become channels
        samples = int(data.shape[dims.index("S")])
        data, dims = samples_to_channels(data, dims)
    if dims != DIMS:
        raise ImageReadError(path, f"unexpected dimension order {dims!r} from the CZI reader")
    sizes = image.physical_pixel_sizes
    channel_names = [str(c) for c in (image.channel_names or [])]
    if samples > 1:
        channel_names = sample_names(channel_names, samples, data.shape[1])
    elif len(channel_names) != data.shape[1]:
        channel_names = default_channel_names(data.shape[1])
    return ImageData(
        path=path,
        data=data,
        physical_pixel_sizes=PhysicalPixelSizes(*(positive_or_none(s) for s in (sizes.Z, sizes.Y, sizes.X))),
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
                    path,
                    f"the file is truncated or corrupt: image data runs to byte {last + 32 + allocated} "
                    f"but the file has {size}",
                )
