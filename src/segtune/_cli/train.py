"""`segtune train`: train or fine-tune a model on images and labels."""

from segtune._cli._unavailable import register_unavailable


def register(subparsers):
    register_unavailable(subparsers, "train", "train or fine-tune a model on images and labels", "training engine is being built")
