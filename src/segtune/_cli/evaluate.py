"""`segtune evaluate`: compare predicted labels with ground truth."""

from segtune._cli._unavailable import register_unavailable


def register(subparsers):
    register_unavailable(subparsers, "evaluate", "compare predicted labels with ground truth", "evaluation is being built")
