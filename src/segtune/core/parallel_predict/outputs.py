"""The OME-Zarr outputs of distributed prediction: a whole file's labels, a chunked volume's store, its TIFF
conversion."""

from __future__ import annotations

import contextlib
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from segtune.core.parallel_predict.cluster import (
    ATTRS_KEY,
    task,
)

LABELS_ARRAY = "0"  # the OME-Zarr dataset path of the full-resolution labels
PROBABILITIES_ARRAY = "probabilities"
DONE_ARRAY = "tasks_done"


def zarr_complete(path: Path) -> bool:
    if not path.is_dir():
        return False
    try:
        import zarr

        group = zarr.open_group(str(path), mode="r")
        return bool(dict(group.attrs).get(ATTRS_KEY, {}).get("complete"))
    except Exception:
        return False


# --- OME-Zarr output ---------------------------------------------------------------------------


def ome_attributes(shape: tuple[int, ...], pixel_sizes: Any, zarr_format: int) -> dict[str, Any]:
    """OME-Zarr multiscales metadata (one level) for a ``(T, Z, Y, X)`` labels array."""
    sizes = [1.0, *((float(s) if s else 1.0) for s in (pixel_sizes or (None, None, None)))]
    axes = [{"name": "t", "type": "time"}] + [
        {"name": a, "type": "space", **({"unit": "micrometer"} if any(pixel_sizes or ()) else {})} for a in "zyx"
    ]
    multiscales = [
        {
            "name": "labels",
            "axes": axes,
            "datasets": [{"path": LABELS_ARRAY, "coordinateTransformations": [{"type": "scale", "scale": sizes}]}],
        }
    ]
    if zarr_format >= 3:
        return {"ome": {"version": "0.5", "multiscales": multiscales}}
    multiscales[0]["version"] = "0.4"
    return {"multiscales": multiscales}


def create_group(path: Path) -> Any:
    import zarr

    return zarr.open_group(str(path), mode="w")


def create_array(group: Any, name: str, **kwargs: Any) -> Any:
    creator = getattr(group, "create_array", None) or group.create_dataset  # zarr 3, zarr 2
    return creator(name, **kwargs)


def zarr_format(group: Any) -> int:
    with contextlib.suppress(Exception):
        return int(group.metadata.zarr_format)
    return 2


def write_zarr_whole(destination: Path, labels: np.ndarray, pixel_sizes: Any, *, source: str) -> None:
    """A finished OME-Zarr in a temporary folder beside ``destination``, then renamed into place."""
    from segtune.core.files import atomic_folder

    with atomic_folder(destination, overwrite=True) as temporary:  # the caller decided about an existing one
        group = create_group(temporary)
        chunks = (1, 1, *(min(512, n) for n in labels.shape[2:]))
        array = create_array(group, LABELS_ARRAY, shape=labels.shape, chunks=chunks, dtype=labels.dtype, fill_value=0)
        array[...] = labels
        group.attrs.update(
            {
                **ome_attributes(tuple(labels.shape), pixel_sizes, zarr_format(group)),
                ATTRS_KEY: {"complete": True, "source": source},
            }
        )


def open_volume_output(
    store: Path, info: dict[str, Any], signature: str, n_tasks: int, probabilities: bool, overwrite: bool
) -> np.ndarray:
    """Create the output zarr, or reopen one with the same signature; returns which tasks are done."""
    import zarr

    if store.exists():
        try:
            group = zarr.open_group(str(store), mode="r")
            attrs = dict(group.attrs).get(ATTRS_KEY, {})
        except Exception:
            attrs = {}
        if attrs.get("signature") == signature and DONE_ARRAY in group:
            return np.asarray(group[DONE_ARRAY][:])
        if not overwrite and attrs:
            raise FileExistsError(
                f"{store} holds a prediction made with another model, image or settings; pass overwrite=True "
                f"(--overwrite) to replace it"
            )
        if not overwrite and not attrs:
            raise FileExistsError(f"{store} exists and is not a segtune prediction; pass overwrite=True to replace it")
        shutil.rmtree(store)
    store.parent.mkdir(parents=True, exist_ok=True)
    plan = info["plan"]
    n_t, _, n_z, n_y, n_x = info["sizes"]
    spatial_dims = info["spatial_dims"]
    core = tuple(min(c, s) for c, s in zip(plan.core, info["shape"], strict=True))
    # one tile's kept region is one chunk: tasks never write the same chunk
    chunks = (1, 1, *core) if spatial_dims == 2 else (1, *core)
    head = info["head"]
    n_classes = info["out_channels"] if head == "semantic" else 2
    dtype = np.uint8 if n_classes <= 256 else np.uint16
    group = create_group(store)
    labels = create_array(group, LABELS_ARRAY, shape=(n_t, n_z, n_y, n_x), chunks=chunks, dtype=dtype, fill_value=0)
    if probabilities:
        k = info["out_channels"]
        p_chunks = (1, k, 1, *core) if spatial_dims == 2 else (1, k, *core)
        create_array(
            group,
            PROBABILITIES_ARRAY,
            shape=(n_t, k, n_z, n_y, n_x),
            chunks=p_chunks,
            dtype="float32",
            fill_value=float("nan"),
        )
    create_array(group, DONE_ARRAY, shape=(n_tasks,), chunks=(1,), dtype="uint8", fill_value=0)
    group.attrs.update(
        {
            **ome_attributes(tuple(labels.shape), info["pixel_sizes"], zarr_format(group)),
            ATTRS_KEY: {
                "complete": False,
                "signature": signature,
                "tasks": n_tasks,
                "head": head,
                "classes": info["classes"],
                "tile": list(plan.tile),
                "core": list(plan.core),
                "batch_size": plan.batch_size,
            },
        }
    )
    return np.zeros(n_tasks, dtype=np.uint8)


@task
def zarr_to_tiff_task(store: str, destination: str, pixel_sizes: Any) -> str:
    """Worker side: an OME-TIFF from a finished labels zarr, plane by plane (never the whole volume in memory)."""
    import tifffile
    import zarr

    from segtune.core.files import atomic_write, ome_metadata
    from segtune.core.io import LABELS_SOFTWARE

    labels = zarr.open_group(store, mode="r")[LABELS_ARRAY]
    n_t, n_z = labels.shape[:2]
    keep = [i for i, n in enumerate(labels.shape) if i >= 2 or n > 1]
    axes = "".join("TZYX"[i] for i in keep)
    shape = tuple(labels.shape[i] for i in keep)
    top = max(int(np.asarray(labels[t, z]).max(initial=0)) for t in range(n_t) for z in range(n_z))
    dtype = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.uint32
    metadata = ome_metadata(axes, pixel_sizes)

    def write(temporary: Path) -> None:
        planes = (np.asarray(labels[t, z]).astype(dtype) for t in range(n_t) for z in range(n_z))
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        tifffile.imwrite(
            temporary,
            data=planes,
            shape=shape,
            dtype=dtype,
            ome=True,
            metadata=metadata,
            compression="zlib",
            bigtiff=nbytes > 2**31,
            software=LABELS_SOFTWARE,
        )

    atomic_write(destination, write, overwrite=True)  # the caller decided about an existing file
    return destination
