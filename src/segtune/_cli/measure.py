"""`segtune measure`: per-object measurements to CSV."""

from segtune._cli._unavailable import register_unavailable


def register(subparsers):
    register_unavailable(subparsers, "measure", "per-object measurements to CSV", "measurement is being built")
