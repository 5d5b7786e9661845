"""The model heads: what a network's output channels mean, and how many there are.

The one table of heads. A model's ``config["head"]`` is one of :data:`HEADS`:

``binary``
    one sigmoid channel, foreground against background.
``three_class``
    three softmax channels, background / interior / boundary (touching objects separate).
``semantic``
    one softmax channel per class (``n_classes``, at least 2).
``multilabel``
    one sigmoid per class; classes may overlap (label files carry them as bit flags).
``image``
    linear outputs, an image-to-image network (a Noise2Noise denoiser), not a segmenter.
"""

from __future__ import annotations

__all__ = [
    "ACTIVATIONS",
    "FIXED_CHANNELS",
    "HEADS",
    "SEGMENTATION_HEADS",
    "class_names",
    "head_of",
    "out_channels",
]

HEADS = ("binary", "three_class", "semantic", "multilabel", "image")
# the heads a segmentation model (one trained on labels) can have
SEGMENTATION_HEADS = ("binary", "three_class", "semantic", "multilabel")
# heads whose number of output channels is fixed, and what each channel is
FIXED_CHANNELS = {
    "binary": ("background", "foreground"),
    "three_class": ("background", "interior", "boundary"),
}
_CHANNELS = {"binary": 1, "three_class": 3}
# how each head's outputs become probabilities: a sigmoid per channel, a softmax over the
# channels, or none (an image-to-image network's output is the result)
ACTIVATIONS = {
    "binary": "sigmoid",
    "multilabel": "sigmoid",
    "three_class": "softmax",
    "semantic": "softmax",
    "image": None,
}


def out_channels(head: str, n_classes: int | None = None) -> int:
    """The number of output channels of a network with ``head`` (``n_classes`` for a class
    head, 2 when not given).

    Examples
    --------
    >>> out_channels("three_class"), out_channels("semantic", 4)
    (3, 4)
    """
    return _CHANNELS.get(head, n_classes or 2)


def head_of(channels: int) -> str:
    """The head a network with ``channels`` outputs has when its config does not say:
    ``binary`` for 1, ``three_class`` for 3, else ``semantic``."""
    return "binary" if channels == 1 else "three_class" if channels == 3 else "semantic"


def class_names(head: str, channels: int) -> list[str]:
    """The names of the classes a ``head`` with ``channels`` outputs predicts (recorded in a
    model's config): the fixed ones of ``binary`` and ``three_class``, else ``class_0``...."""
    fixed = FIXED_CHANNELS.get(head)
    return list(fixed) if fixed is not None else [f"class_{i}" for i in range(channels)]
