"""`segtune models`: list the bundled pretrained models."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the bundled pretrained models",
        description="List the bundled pretrained models by name. Every command taking --model "
        "accepts one of these names or the path of a model folder.",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segtune.core.models.registry import list_models

    models = list_models()
    width = max(len(m.name) for m in models)
    for model in models:
        print(f"{model.name:<{width}}  {model.description}")
    return 0
