"""`segtune pretrain`: self-supervised pretraining."""

from segtune._cli._unavailable import register_unavailable


def register(subparsers):
    register_unavailable(subparsers, "pretrain", "self-supervised pretraining", "label-efficient learning is being built")
