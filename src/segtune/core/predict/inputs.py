"""The front end's inputs: the model and its config, any image as a TCZYX array, the channels the
model takes, and the normalisation applied to each window."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from segtune.core.predict.windows import as_array


def resolve_model(model: Any, config: Mapping[str, Any] | None, device: Any) -> tuple[Any, dict[str, Any]]:
    """``(callable, config)`` from a model name or folder (loaded), a ``(module, config)`` pair, or a
    module with ``config`` (or one describing its ``architecture``, given a default config)."""
    if isinstance(model, (str, os.PathLike)):
        from segtune.core.models.store import load_model

        model, loaded = load_model(model)
        config = loaded if config is None else config
    elif isinstance(model, tuple) and len(model) == 2 and isinstance(model[1], Mapping):
        model, loaded = model
        config = loaded if config is None else config
    if config is None:
        architecture = getattr(model, "architecture", None)
        if isinstance(architecture, Mapping):
            from segtune.core.models.heads import head_of
            from segtune.core.normalize import DEFAULT_PERCENTILES, percentile_spec

            config = {
                "architecture": dict(architecture),
                "head": head_of(int(architecture.get("out_channels", 1))),
                "normalization": percentile_spec(*DEFAULT_PERCENTILES),
            }
        else:
            raise ValueError(
                "config is required when model is a plain callable (it says the head, spatial dims and channels)"
            )
    if not callable(model):
        raise ValueError(f"model must be callable, got {type(model).__name__}")
    return model, dict(config)


def as_tczyx(image: Any, axes: str | None, channel_names: Sequence[str] | None) -> tuple[Any, list[str], str]:
    """``(data, channel names, axes given)``: an ``ImageData`` or an array whose dimensions ``axes``
    names (default by their number) as a lazy 5D ``TCZYX`` array, missing axes of length 1."""
    names = list(channel_names) if channel_names is not None else None
    if hasattr(image, "data") and hasattr(image, "channel_names") and hasattr(image, "physical_pixel_sizes"):
        data = image.data
        names = list(image.channel_names) if names is None else names
        axes = "TCZYX"
    else:
        data = as_array(image)
        ndim = len(data.shape)
        if axes is None:
            axes = {2: "YX", 3: "ZYX", 4: "CZYX", 5: "TCZYX"}.get(ndim)
            if axes is None:
                raise ValueError(f"image must have 2 to 5 dimensions (YX ... TCZYX), got shape {tuple(data.shape)}")
        axes = axes.upper()
        if len(axes) != ndim or len(set(axes)) != ndim or any(a not in "TCZYX" for a in axes):
            raise ValueError(
                f"axes {axes!r} do not describe an image of shape {tuple(data.shape)} (letters from TCZYX)"
            )
        if [a for a in "TCZYX" if a in axes] != list(axes):
            data = _transpose(data, [axes.index(a) for a in "TCZYX" if a in axes])
            axes = "".join(a for a in "TCZYX" if a in axes)
        for position, letter in enumerate("TCZYX"):
            if letter not in axes:
                data = _expand(data, position)
    n_c = int(data.shape[1])
    if names is None or len(names) != n_c:
        names = [f"Channel {i}" for i in range(n_c)]
    return data, names, axes


def _transpose(data: Any, order: list[int]) -> Any:
    if hasattr(data, "transpose"):
        return data.transpose(order)
    return np.transpose(np.asarray(data), order)


def _expand(data: Any, position: int) -> Any:
    if isinstance(data, np.ndarray):
        return np.expand_dims(data, position)
    if hasattr(data, "compute"):
        import dask.array as da

        return da.expand_dims(data, position)
    try:
        import dask.array as da

        return da.expand_dims(da.from_array(data, chunks=getattr(data, "chunks", "auto")), position)
    except Exception:
        return np.expand_dims(np.asarray(data), position)


def colour_channel(data: Any, names: list[str], channel: Any, in_channels: int) -> tuple[Any, list[str], Any]:
    """``channel="Bright"`` naming a colour channel, whose RGB samples are the channels ``Bright (red)``,
    ``Bright (green)``, ``Bright (blue)``: those samples for a model that takes three channels, their
    mean (a grey image) for a model that takes one.

    An image that is one colour channel and nothing else (its channels are ``red``, ``green``,
    ``blue`` and maybe ``alpha``: an RGB PNG, TIFF or napari layer) needs no choice: ``channel=None``
    means its colours (``"RGB"``) when the model does not take all its channels as they are. The
    bundled models read colour images that way (the mean of the colours) in training."""
    from segtune.core.io import sample_group

    if channel is None and plain_colour(names, in_channels):
        channel = "RGB"
    if not isinstance(channel, str) or channel in names:
        return data, names, channel
    group = sample_group(names, channel)[:3]  # alpha is no colour
    if len(group) != 3:
        return data, names, channel
    if in_channels == 3:
        return data, names, group
    if in_channels != 1:
        return data, names, channel
    colour = data[:, group[0] : group[-1] + 1]
    return np.mean(colour, axis=1, keepdims=True, dtype=np.float32), [channel], 0


def plain_colour(names: Sequence[str], in_channels: int) -> bool:
    """Whether an image with channels ``names`` is one colour channel and nothing else (``red``,
    ``green``, ``blue``, maybe ``alpha``) that a model taking ``in_channels`` reads as its colours
    when no channel is chosen (see :func:`colour_channel`)."""
    from segtune.core.io import SAMPLE_NAMES

    return len(names) != in_channels and in_channels in (1, 3) and tuple(names) in SAMPLE_NAMES.values()


def _colour_names(names: list[str]) -> list[str]:
    """The colour channels (their RGB samples are channels) by the names ``channel=`` takes."""
    from segtune.core.io import SAMPLE_NAMES

    if list(names[:3]) == list(SAMPLE_NAMES[3]):
        return ["RGB"]
    found = [n.removesuffix(" (red)") for n in names if n.endswith(" (red)")]
    return list(dict.fromkeys(found))


def select_channels(channel: Any, names: list[str], n_c: int, in_channels: int) -> list[int]:
    """The channel indices ``channel`` (index, name or several) picks for a model taking ``in_channels``."""
    if channel is None:
        if n_c == in_channels:
            return list(range(n_c))
        colours = _colour_names(names)
        hint = (
            f"; a colour channel by its name ({', '.join(colours)}) gives "
            f"{'its three samples' if in_channels == 3 else 'the mean of its samples'}"
            if colours and in_channels in (1, 3)
            else ""
        )
        raise ValueError(
            f"the image has {n_c} channels ({', '.join(names)}) and the model takes {in_channels}; "
            f"choose with channel= (--channel), by index or name{hint}"
        )
    wanted = [channel] if isinstance(channel, (int, str, np.integer)) else list(channel)
    chosen = []
    for c in wanted:
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in names:
                raise ValueError(f"channel {c!r} does not exist; the image's channels are {names}")
            chosen.append(names.index(c))
        else:
            index = int(c)
            if not -n_c <= index < n_c:
                raise ValueError(f"channel {index} does not exist; the image has {n_c} channel(s): {names}")
            chosen.append(index % n_c)
    if len(chosen) != in_channels:
        raise ValueError(f"the model takes {in_channels} channel(s) but {len(chosen)} were chosen ({channel!r})")
    return chosen


def normalizer(data: Any, chosen: list[int], normalization: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """The window transform a config's ``normalization`` asks for (percentiles over the whole of
    ``data`` per chosen channel, or the fixed ``limits``); None for no normalisation."""
    from segtune.core.normalize import model_percentiles, percentiles

    if normalization is None or normalization is False:
        return None
    spec = dict(normalization) if isinstance(normalization, Mapping) else {}
    method = spec.get("method", "percentile")
    if method in (None, "none"):
        return None
    if method != "percentile":
        raise ValueError(f"normalization method {method!r} is not known; this version applies 'percentile' or 'none'")
    low, high, clip = model_percentiles({"normalization": spec})
    fixed = spec.get("limits")  # (lo, hi) per chosen channel, measured before (see whole_image_settings)
    if fixed is not None and len(fixed) != len(chosen):
        raise ValueError(f"normalization limits are given for {len(fixed)} channel(s) but {len(chosen)} are chosen")
    limits = []
    for i, c in enumerate(chosen):
        lo, hi = (float(fixed[i][0]), float(fixed[i][1])) if fixed is not None else percentiles(data[:, c], low, high)
        limits.append((lo, max(hi - lo, 1e-6)))
    offsets = np.array([lo for lo, _ in limits], dtype=np.float32)
    scales = np.array([1.0 / s for _, s in limits], dtype=np.float32)

    def transform(window: np.ndarray) -> np.ndarray:
        shape = (-1,) + (1,) * (window.ndim - 1)
        scaled = (window - offsets.reshape(shape)) * scales.reshape(shape)
        return np.clip(scaled, 0.0, 1.0) if clip else scaled  # as training normalised (train/data)

    return transform
