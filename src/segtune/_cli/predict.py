"""`segtune predict`: segment images with a model."""

from segtune._cli._unavailable import register_unavailable


def register(subparsers):
    register_unavailable(subparsers, "predict", "segment images with a model", "tiled prediction is being built")
