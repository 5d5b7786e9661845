"""`segtune pseudolabel`: pseudo-labels from a model."""

from segtune._cli._unavailable import register_unavailable


def register(subparsers):
    register_unavailable(subparsers, "pseudolabel", "pseudo-labels from a model", "label-efficient learning is being built")
