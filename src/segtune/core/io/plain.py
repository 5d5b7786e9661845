"""Reading PNG and JPEG images (imageio)."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np

from segtune.core.io.image import (
    SAMPLE_NAMES,
    ImageData,
    ImageReadError,
    PhysicalPixelSizes,
    default_channel_names,
    pick_scene,
)

__all__ = ["open_plain"]


def open_plain(path: Path, scene: int | str | None) -> ImageData:
    import imageio.v3 as iio

    pick_scene(path, ["Image 0"], scene)
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
        channel_names=list(SAMPLE_NAMES[samples]) if samples > 1 else default_channel_names(array.shape[0]),
        scenes=["Image 0"],
        scene="Image 0",
        metadata={"samples": samples},
    )
