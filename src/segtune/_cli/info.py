"""`segtune info PATH`: what an image file holds (dims, dtype, pixel sizes, channels, scenes)."""

from __future__ import annotations

import argparse
import json

from segtune._cli.common import scene_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="show the dimensions, pixel sizes and channels of images")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files (.czi, .tif, .ome.tif, .png)")
    parser.add_argument("--scene", default=None, help="scene (CZI) or series (TIFF) to describe, by index or name")
    parser.add_argument("--json", action="store_true", help="print one JSON object per file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segtune.core.io import open_image

    scene = scene_arg(args.scene)
    for path in args.paths:
        image = open_image(path, scene=scene)
        info = {
            "path": str(image.path),
            "dims": image.sizes(),
            "dtype": str(image.dtype),
            "physical_pixel_sizes_um": dict(zip("ZYX", image.physical_pixel_sizes, strict=True)),
            "channel_names": image.channel_names,
            "scenes": image.scenes,
            "scene": image.scene,
        }
        if args.json:
            print(json.dumps(info))
            continue
        sizes = ", ".join(f"{k}={v}" for k, v in info["dims"].items())
        pixel = ", ".join(
            f"{k}={'unknown' if v is None else f'{v:.4g} um'}" for k, v in info["physical_pixel_sizes_um"].items()
        )
        print(f"{info['path']}")
        print(f"  dims      TCZYX: {sizes}")
        print(f"  dtype     {info['dtype']}")
        print(f"  pixels    {pixel}")
        print(f"  channels  {', '.join(info['channel_names'])}")
        print(f"  scenes    {', '.join(info['scenes'])} (showing {info['scene']})")
    return 0
