"""`segtune autolabel`: labels from a fluorescence channel."""

from segtune._cli._unavailable import register_unavailable


def register(subparsers):
    register_unavailable(subparsers, "autolabel", "labels from a fluorescence channel", "label-efficient learning is being built")
