"""The TCZYX front end: :func:`predict` (normalise, tile, activate, threshold, label) and its option groups."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from segtune.core.models.heads import ACTIVATIONS, HEADS
from segtune.core.predict._common import check_spatial_dims
from segtune.core.predict.engine import execute, make_skip, on_local_threads
from segtune.core.predict.inputs import (
    as_tczyx,
    colour_channel,
    normalizer,
    resolve_model,
    select_channels,
)
from segtune.core.predict.tiling import TilePlan
from segtune.core.predict.windows import Sink, Source, compute, open_output
from segtune.core.progress import CancelToken, ProgressCallback, Reporter


@dataclass(frozen=True)
class TilingOptions:
    """How :func:`predict` runs the model over the image (each as in :func:`predict_raw`).

    Attributes
    ----------
    tile_shape
        Largest window fed to the model (an int for all axes or one per axis); default as large
        as ``memory_limit`` allows.
    overlap
        Gaussian blending only: fraction of the window neighbouring windows share (0.25).
    batch_size
        Tiles per forward pass (default: what memory allows).
    blend
        ``"exact"`` (stitched output equals one untiled pass) or ``"gaussian"``.
    precision
        ``"float32"``, or ``"bfloat16"``/``"float16"`` autocast.
    memory_limit
        Bytes (or ``"2GB"``) one forward pass may use.
    skip_threshold
        Skip tiles whose kept region holds no raw pixel above this (any channel); they read as
        certain background.

    Examples
    --------
    >>> TilingOptions(tile_shape=256, batch_size=4)  # doctest: +ELLIPSIS
    TilingOptions(tile_shape=256, overlap=None, batch_size=4, blend='exact', ...)
    """

    tile_shape: int | Sequence[int] | None = None
    overlap: float | Sequence[float] | None = None
    batch_size: int | None = None
    blend: str = "exact"
    precision: str = "float32"
    memory_limit: float | str | None = None
    skip_threshold: float | None = None


@dataclass(frozen=True)
class ObjectOptions:
    """How :func:`predict` separates and cleans the objects of its labels (pixels in 2D, voxels in 3D).

    Attributes
    ----------
    split
        Separate touching objects: a distance-transform watershed (binary head), or seeds at
        distance peaks instead of interior components (three-class head). A config with
        ``"split_instances": true`` (the bundled nuclei models) always splits.
    min_distance
        Seed spacing for ``split`` (default a quarter of the object diameter, a third for
        three-class heads: the ``diameter`` used, else the config's ``object_diameter``, else 5).
    min_size
        Drop smaller objects. ``"auto"`` (or None): :func:`segtune.core.postprocess.default_min_size`
        of the object diameter (the ``diameter`` used, else the config's ``object_diameter``), 10 px
        without one.
    max_size
        Drop larger objects.
    fill_holes
        Fill holes inside objects.

    Examples
    --------
    >>> ObjectOptions(min_size="auto", fill_holes=True).whole_object_options()
    ['min_size', 'fill_holes']
    """

    split: bool = False
    min_distance: int | None = None
    min_size: int | str | None = 0
    max_size: int | None = None
    fill_holes: bool = False

    def whole_object_options(self) -> list[str]:
        """The options set here that look at whole objects (a prediction streamed or split into
        chunks cannot apply them): ``split``, ``min_size``, ``max_size``, ``fill_holes``."""
        return [
            name
            for name in ("split", "min_size", "max_size", "fill_holes")
            if getattr(self, name) not in (None, False, 0)
        ]


_Options = TypeVar("_Options", TilingOptions, ObjectOptions)


def option_group(value: _Options | None, kind: type[_Options], name: str) -> _Options:
    """``value``, or the defaults of ``kind`` for None; anything else is refused, naming the argument."""
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__} (or None), got {type(value).__name__}: {value!r}")
    return value


@dataclass
class PredictionResult:
    """What :func:`predict` returns.

    Attributes
    ----------
    probabilities
        float32 ``(T, K, Z, Y, X)`` activated model output (sigmoid or softmax), numpy or zarr.
    labels
        ``(T, Z, Y, X)``: a uint8 0/1 mask, class indices (semantic head) or, with
        ``instances=True``, int32 instance labels (each object one number across the stack).
    head
        ``"binary"``, ``"three_class"`` or ``"semantic"``.
    classes
        Class names from the model's config.
    diameter
        The object diameter the image was zoomed for (None when it was not zoomed).
    min_size
        The smallest object kept, in pixels (voxels): as given, or the default rule's.
    """

    probabilities: Any
    labels: np.ndarray | None
    head: str
    classes: list[str]
    diameter: float | None = None
    min_size: int = 0


@on_local_threads
def predict(
    model: Any,
    image: Any,
    *,
    config: Mapping[str, Any] | None = None,
    axes: str | None = None,
    channel: int | str | Sequence[int | str] | None = None,
    channel_names: Sequence[str] | None = None,
    threshold: float = 0.5,
    instances: bool = False,
    objects: ObjectOptions | None = None,
    normalize: bool = True,
    labels: bool = True,
    tiling: TilingOptions | None = None,
    device: str | torch.device = "auto",
    out: Any = None,
    diameter: float | str | None = "auto",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> PredictionResult:
    """Segment an image or stack with a model: normalise, tile, activate, threshold, label.

    Parameters
    ----------
    model
        A model name or folder (loaded with :func:`segtune.core.models.store.load_model`), the
        ``(model, config)`` pair ``load_model`` returns, or a torch module/callable with ``config``.
    image
        An :class:`segtune.core.io.ImageData` (from ``open_image``) or an array (numpy/dask/zarr)
        whose dimensions ``axes`` names (default by number of dimensions: ``YX``, ``ZYX``,
        ``CZYX``, ``TCZYX``).
    config
        The model's config (``head``, ``architecture.spatial_dims``/``in_channels``,
        ``normalization``, ``classes``, ``object_diameter``) when ``model`` is a module.
    axes
        Dimension letters of an array ``image`` (subset of ``TCZYX`` in that order).
    channel
        Channel(s) to feed the model, by index or name; required when the image has more
        channels than the model takes.
    channel_names
        Names for an array ``image``'s channels (an ``ImageData`` brings its own).
    threshold
        Foreground probability threshold.
    instances
        Label objects: connected components (binary head) or a seeded watershed (three-class
        head); False gives a 0/1 mask (class indices for a semantic head).
    objects
        Splitting touching objects and the size and hole filters (:class:`ObjectOptions`;
        default: no splitting, no filter).
    normalize
        Apply the config's normalisation (percentiles per channel over the whole image).
    labels
        Compute ``labels`` (False: probabilities only, e.g. for an output that does not fit in memory).
    tiling
        Tile shape, overlap, batch size, blending, precision, memory limit, tile skipping
        (:class:`TilingOptions`; default: all automatic, exact tiling in float32).
    device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cuda"``, ``"mps"`` or ``"cpu"``.
    out
        Where the probabilities go (see :func:`predict_raw`), shape ``(T, K, Z, Y, X)``.
    diameter
        Typical object diameter in the image, in pixels: the image is zoomed in Y and X by
        ``config["object_diameter"] / diameter`` before prediction and the probabilities are
        zoomed back, so a model trained on one magnification serves others. ``"auto"``
        estimates it (from the first time point) for models whose config asks for it
        (``"auto_diameter": true``, the bundled nuclei models) and leaves other models' input
        as it is; ``None`` or 0 never zooms. See :func:`segtune.core.diameter.resolve_diameter`.
    progress, cancel
        See :mod:`segtune.core.progress`. One ``"predict"`` stage counts the diameter estimate,
        the batches of tiles, and the planes (time points for a 3D model) labelled; ``message``
        names the phase.

    Returns
    -------
    PredictionResult
        With ``diameter`` the diameter used (None when the image was not zoomed) and ``min_size``
        the smallest object kept.

    Raises
    ------
    ValueError
        For a channel that does not exist, a channel count the model cannot take, or a config
        without the needed fields.
    TypeError
        For ``tiling`` or ``objects`` that are not a :class:`TilingOptions` or :class:`ObjectOptions`.

    Examples
    --------
    >>> result = predict("nuclei-2d", image, instances=True, objects=ObjectOptions(min_size="auto"),
    ...                  tiling=TilingOptions(tile_shape=512))  # doctest: +SKIP
    """
    tiling = option_group(tiling, TilingOptions, "tiling")
    objects = option_group(objects, ObjectOptions, "objects")
    model, config = resolve_model(model, config, device)
    head = str(config.get("head", "binary"))
    architecture = config.get("architecture", {}) or {}
    spatial_dims = int(architecture.get("spatial_dims", 2))
    in_channels = int(architecture.get("in_channels", 1))
    classes = list(config.get("classes") or [])
    check_spatial_dims(spatial_dims)

    data, names, pixel_axes = as_tczyx(image, axes, channel_names)
    from segtune.core.normalize import check_pixels

    check_pixels(data)
    data, names, channel = colour_channel(data, names, channel, in_channels)
    n_t, n_c, n_z, n_y, n_x = (int(s) for s in data.shape)
    chosen = select_channels(channel, names, n_c, in_channels)

    from segtune.core import diameter as sizing

    n_units = n_t * n_z if spatial_dims == 2 else n_t  # planes (time points) to label
    phases = _Phases(progress, cancel, labelling=n_units if labels and head != "image" else 0)
    wants_estimate = isinstance(diameter, str) and config.get("object_diameter") and config.get("auto_diameter")
    if wants_estimate:
        phases.start("estimating the object diameter")
    used_diameter, zoom = sizing.resolve_diameter(diameter, config, diameter_sample(data, chosen, config, diameter))
    phases.done_one()
    original_yx, final_out = (n_y, n_x), out
    if zoom != 1.0:
        # predict on an in-memory copy zoomed to the model's object size, then zoom back
        data = sizing.rescale_stack(data, chosen, zoom)
        chosen, out = list(range(len(chosen))), None
        n_t, n_c, n_z, n_y, n_x = (int(s) for s in data.shape)

    transform = None
    if normalize:
        transform = normalizer(data, chosen, config.get("normalization"))

    if spatial_dims == 2:
        items = [(t, z) for t in range(n_t) for z in range(n_z)]
        shape = (n_y, n_x)

        def read(item: tuple[int, ...], box: tuple[slice, ...]) -> np.ndarray:
            t, z = item
            return np.stack([compute(data[t, c, z][box]) for c in chosen])

        def prefix(item: tuple[int, ...]) -> tuple:
            return (item[0], slice(None), item[1])

        chunk_of = lambda k, plan: (1, k, 1, *(min(c, s) for c, s in zip(plan.core, shape, strict=True)))  # noqa: E731
    else:
        items = [(t,) for t in range(n_t)]
        shape = (n_z, n_y, n_x)

        def read(item: tuple[int, ...], box: tuple[slice, ...]) -> np.ndarray:
            return np.stack([compute(data[item[0], c][box]) for c in chosen])

        def prefix(item: tuple[int, ...]) -> tuple:
            return (item[0], slice(None))

        chunk_of = lambda k, plan: (1, k, *(min(c, s) for c, s in zip(plan.core, shape, strict=True)))  # noqa: E731

    def make_output(k: int, plan: TilePlan) -> Sink:
        full = (n_t, k, n_z, n_y, n_x)
        return Sink(open_output(out, full, chunk_of(k, plan), False), prefix)

    activation = _activation(head)
    skip_value = _background_probabilities(head, int(architecture.get("out_channels", 1)))
    skip = make_skip(tiling.skip_threshold, None, shape)
    source = Source(read, shape, "reflect", transform)
    probabilities = execute(
        model,
        source,
        items,
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        make_output=make_output,
        tile_shape=tiling.tile_shape,
        overlap=tiling.overlap,
        batch_size=tiling.batch_size,
        device=device,
        blend=tiling.blend,
        precision=tiling.precision,
        memory_limit=tiling.memory_limit,
        halo=None,
        divisor=None,
        skip=skip,
        skip_value=skip_value,
        sigma_scale=0.125,
        activation=activation,
        progress=phases.tiles,
        cancel=cancel,
        cpu_tile_pixels=CPU_TILE_PIXELS,
    )
    if zoom != 1.0:
        if isinstance(final_out, (str, os.PathLike)):
            final_out = open_output(
                final_out, (n_t, probabilities.shape[1], n_z, *original_yx), (1, 1, 1, *original_yx), False
            )
        probabilities = sizing.restore_stack(probabilities, original_yx, final_out)
    result_labels = None
    from segtune.core import postprocess

    object_size = used_diameter or config.get("object_diameter")
    min_size = objects.min_size
    if min_size is None or min_size == "auto":
        min_size = postprocess.default_min_size(object_size, spatial_dims)
    if labels and head != "image":
        # a model can ask for distance-peak seeds (the bundled nuclei models do: it splits
        # touching nuclei their boundary class missed); three-class seeds sit a third of a
        # diameter apart, binary split seeds a quarter
        split = objects.split or bool(config.get("split_instances", False))
        min_distance = objects.min_distance
        if min_distance is None:
            min_distance = postprocess.default_seed_distance(object_size, head)
        result_labels = _label_stack(
            probabilities,
            head,
            spatial_dims,
            postprocess,
            threshold=threshold,
            instances=instances,
            split=split,
            min_distance=min_distance,
            min_size=int(min_size),
            max_size=objects.max_size,
            fill_holes=objects.fill_holes,
            step=phases.labelled,
        )
    return PredictionResult(probabilities, result_labels, head, classes, used_diameter, int(min_size))


def whole_image_settings(
    model: Any,
    image: Any,
    *,
    config: Mapping[str, Any] | None = None,
    axes: str | None = None,
    channel: int | str | Sequence[int | str] | None = None,
    channel_names: Sequence[str] | None = None,
    diameter: float | str | None = "auto",
) -> tuple[dict[str, Any], float | None]:
    """The config and diameter with which :func:`predict` on any part of ``image`` sees that part
    as it would inside the whole: the normalisation limits (percentiles of the whole image, per
    chosen channel) and the object diameter (estimated once, from the whole) fixed.

    A viewer predicts the visible region of a large image first and the whole next; with these
    settings both agree inside the region (away from its edges, where the context differs).

    Parameters
    ----------
    model, image, config, axes, channel, channel_names, diameter
        As for :func:`predict`.

    Returns
    -------
    config : dict
        The model's config with ``normalization["limits"]`` set (when it normalises).
    diameter : float or None
        The diameter to pass to :func:`predict` (0 when the image is not to be zoomed).
    """
    from segtune.core import diameter as sizing
    from segtune.core.normalize import model_percentiles, percentiles

    model, config = resolve_model(model, config, "cpu")
    architecture = config.get("architecture", {}) or {}
    in_channels = int(architecture.get("in_channels", 1))
    data, names, _ = as_tczyx(image, axes, channel_names)
    data, names, channel = colour_channel(data, names, channel, in_channels)
    chosen = select_channels(channel, names, int(data.shape[1]), in_channels)
    used_diameter, _ = sizing.resolve_diameter(diameter, config, diameter_sample(data, chosen, config, diameter))
    spec = config.get("normalization")
    if isinstance(spec, Mapping) and spec.get("method", "percentile") == "percentile" and spec.get("limits") is None:
        low, high, _ = model_percentiles(config)
        limits = [[float(v) for v in percentiles(data[:, c], low, high)] for c in chosen]
        config = {**config, "normalization": {**spec, "limits": limits}}
    return config, (used_diameter if used_diameter is not None else 0)


def diameter_sample(
    data: Any, chosen: list[int], config: Mapping[str, Any], diameter: Any, side: int | None = None
) -> np.ndarray | None:
    """What the automatic diameter is estimated from: the chosen channels summed, at the first
    time point (only its middle plane is read for a 2D model), in Y and X the middle ``side``
    pixels when given (the whole plane otherwise); None when no estimate is asked for."""
    if not (isinstance(diameter, str) and config.get("object_diameter") and config.get("auto_diameter")):
        return None
    spatial_dims = int((config.get("architecture", {}) or {}).get("spatial_dims", 2))
    n_y, n_x = (int(s) for s in data.shape[-2:])
    yx = (slice(None), slice(None))
    if side is not None:
        y0, x0 = max(0, n_y // 2 - side // 2), max(0, n_x // 2 - side // 2)
        yx = (slice(y0, y0 + side), slice(x0, x0 + side))
    z = int(data.shape[2]) // 2 if spatial_dims == 2 else slice(None)
    return np.sum([compute(data[(0, c, z, *yx)]) for c in chosen], axis=0, dtype=np.float32)


# predict()'s largest tile on the CPU: one pass over 2 Mpx takes some ten seconds there, so a
# larger image is cut into tiles and its progress bar moves (for ~10 % more pixels computed)
CPU_TILE_PIXELS = 1 << 21


class _Phases:
    """One progress count over predict()'s phases: the diameter estimate (one step), the batches
    of tiles (as many as the tiling makes), then one step per plane or time point labelled."""

    def __init__(self, progress: ProgressCallback | None, cancel: CancelToken | None, labelling: int) -> None:
        self.reporter = Reporter(progress, cancel, stage="predict")
        self.labelling = labelling
        self.offset = 0  # steps of the phases before the tiles
        self.tiles_total: int | None = None
        self.labels_done = 0

    def _total(self) -> int | None:
        return None if self.tiles_total is None else self.offset + self.tiles_total + self.labelling

    def start(self, message: str) -> None:
        self.reporter.step(self.offset, total=self._total(), message=message)

    def done_one(self) -> None:
        self.offset = 1

    def tiles(self, event: Any) -> None:
        self.tiles_total = event.total
        self.reporter.step(self.offset + event.done, total=self._total(), message="tiles", **event.metrics)

    def labelled(self) -> None:
        self.labels_done += 1
        if self.tiles_total is None:
            self.tiles_total = 0
        done = self.offset + self.tiles_total + self.labels_done
        self.reporter.step(done, total=self._total(), message="labelling planes")


def _label_stack(
    probabilities: Any,
    head: str,
    spatial_dims: int,
    postprocess: Any,
    step: Callable[[], None] | None = None,
    **options: Any,
) -> np.ndarray:
    """Post-process each time point (3D model) or plane (2D model); instance numbers run on across the stack."""
    n_t, _, n_z = probabilities.shape[:3]
    out = None
    offset = 0
    instances = options["instances"]
    units = [(t, None) for t in range(n_t)] if spatial_dims == 3 else [(t, z) for t in range(n_t) for z in range(n_z)]
    for t, z in units:
        p = np.asarray(probabilities[t] if z is None else probabilities[t, :, z])
        result = postprocess.postprocess(
            p,
            head,
            level=options["threshold"],
            instances=instances,
            split=options["split"],
            min_distance=options["min_distance"],
            min_size=options["min_size"],
            max_size=options["max_size"],
            fill_holes=options["fill_holes"],
        )
        if out is None:
            dtype = np.int32 if instances else result.dtype
            out = np.zeros((n_t, n_z, *probabilities.shape[3:]), dtype=dtype)
        if instances:
            top = int(result.max())
            result = np.where(result > 0, result + offset, 0)
            offset += top
        if z is None:
            out[t] = result
        else:
            out[t, z] = result
        if step is not None:
            step()
    assert out is not None
    return out


def _activation(head: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if head not in ACTIVATIONS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
    if ACTIVATIONS[head] == "sigmoid":
        return torch.sigmoid
    if ACTIVATIONS[head] == "softmax":
        return lambda y: torch.softmax(y, dim=1)
    return None  # an image-to-image model (a denoiser): its output is the result


def _background_probabilities(head: str, out_channels: int) -> list[float]:
    """What a skipped tile reads as: certain background."""
    if ACTIVATIONS.get(head) != "softmax":
        return [0.0] * out_channels
    return [1.0] + [0.0] * (out_channels - 1)
