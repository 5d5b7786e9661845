"""`segtune export-bioimageio`: a model folder as a bioimage.io model package (.zip)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-bioimageio",
        help="write a model as a bioimage.io package",
        description=(
            "Write a model (bundled name or folder) as a bioimage.io model package (format 0.5) that deepImageJ, "
            "ilastik, QuPath and bioimageio.core run: PyTorch state dict with the U-Net source, TorchScript, "
            "percentile normalisation as scale_range preprocessing, test tensors from segtune's own prediction, "
            "the model card as documentation. The package is validated by bioimageio.spec before it is kept."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="a bundled model name or a model folder")
    parser.add_argument("out", metavar="OUT.zip", help="the package to write")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.zip if it exists")
    parser.add_argument("--no-torchscript", action="store_true", help="state dict weights only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segtune.core.models.bioimageio import export_bioimageio

    path = export_bioimageio(args.model, args.out, overwrite=args.overwrite, torchscript=not args.no_torchscript)
    print(f"wrote {path}")
    return 0
