"""`segtune models`: list the bundled pretrained models."""

from segtune._cli._unavailable import register_unavailable


def register(subparsers):
    register_unavailable(subparsers, "models", "list the bundled pretrained models", "bundled models is being built")
