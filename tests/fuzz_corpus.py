"""A corpus of broken inputs for the command line: every case must end in one line and exit 2.

Run as a script to write the corpus to a folder and run it (``python tests/fuzz_corpus.py DIR``);
``tests/test_fuzz.py`` runs it under pytest. Each :class:`Case` is a ``segtune`` command line
whose input is broken in one way (a truncated or bit-flipped file, a corrupt tile or subblock, a
text file with an image's name, NaN pixels, a model folder asking for 360 GB, ...), and the text
its one-line error must contain (the broken file's name).

Cases come from real files: valid images written here by tifffile and imageio, a CZI copied
from the shared data when it is there, and a tiny real model saved by ``save_model``.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SHARED_CZI = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "czi" / "s_1_t_1_c_1_z_1.czi"


@dataclass
class Case:
    """One broken input: the command line, and what the error line must name."""

    name: str
    argv: list[str]
    names: str
    # a bit flip may leave a file valid: then success (0) is as right as a clean refusal (2)
    may_succeed: bool = False
    notes: dict = field(default_factory=dict)


def _blobs(shape=(64, 64), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 10, shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(6):
        y, x = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8)
        image[(yy - y) ** 2 + (xx - x) ** 2 < 25] += 400
    return image.astype(np.uint16)


def _labels(shape=(64, 64)) -> np.ndarray:
    labels = np.zeros(shape, np.uint16)
    labels[8:20, 8:20] = 1
    labels[30:44, 30:50] = 2
    return labels


def tiny_model(folder: Path, **config_fields) -> Path:
    """A real (untrained) model folder; ``config_fields`` override its config afterwards."""
    import torch

    from segtune.core.models.store import CONFIG_NAME, default_config, save_model
    from segtune.core.models.unet import UNet

    torch.manual_seed(0)
    model = UNet(spatial_dims=2, in_channels=1, out_channels=1, depth=2, base_channels=4)
    save_model(model, default_config(model.architecture), folder)
    if config_fields:
        config = json.loads((folder / CONFIG_NAME).read_text())
        for key, value in config_fields.items():
            if key.startswith("architecture."):
                config["architecture"][key.split(".", 1)[1]] = value
            else:
                config[key] = value
        (folder / CONFIG_NAME).write_text(json.dumps(config))
    return folder


def _valid_images(folder: Path) -> dict[str, Path]:
    import imageio.v3 as iio
    import tifffile

    image = _blobs()
    files = {
        "plain.tif": lambda p: tifffile.imwrite(p, image),
        "tiled.tif": lambda p: tifffile.imwrite(p, image, tile=(16, 16), compression="zlib"),
        "stack.ome.tif": lambda p: tifffile.imwrite(p, np.stack([image] * 3), ome=True, metadata={"axes": "ZYX"}),
        "image.png": lambda p: iio.imwrite(p, (image // 4).astype(np.uint8)),
    }
    out = {}
    for name, write in files.items():
        write(folder / name)
        out[name] = folder / name
    if SHARED_CZI.is_file():
        shutil.copyfile(SHARED_CZI, folder / "image.czi")
        out["image.czi"] = folder / "image.czi"
    return out


def corrupt_tile(source: Path, target: Path, tile: int = 5) -> Path:
    import tifffile

    with tifffile.TiffFile(source) as tif:
        offset = tif.pages[0].dataoffsets[tile]
    data = bytearray(source.read_bytes())
    data[offset + 4 : offset + 24] = b"\xff" * 20
    target.write_bytes(bytes(data))
    return target


def czi_variant(source: Path, target: Path, how: str) -> Path:
    data = bytearray(source.read_bytes())
    block = data.find(b"ZISRAWSUBBLOCK") + 32
    if how == "subblock":  # the first subblock's dimension entries overwritten
        data[block + 48 : block + 108] = b"\xff" * 60
    elif how == "directory_count":  # the directory claims two billion entries
        directory = data.find(b"ZISRAWDIRECTORY")
        struct.pack_into("<i", data, directory + 32, 2**31 - 1)
    target.write_bytes(bytes(data))
    return target


def _bit_flips(source: Path, target: Path, seed: int, n: int = 8) -> Path:
    data = bytearray(source.read_bytes())
    rng = random.Random(seed)
    for _ in range(n):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    target.write_bytes(bytes(data))
    return target


def build_corpus(root: Path) -> list[Case]:
    """Write the broken files under ``root`` and return the cases that use them."""
    import tifffile

    root.mkdir(parents=True, exist_ok=True)
    valid = root / "valid"
    bad = root / "bad"
    out = root / "out"
    for folder in (valid, bad, out):
        folder.mkdir(exist_ok=True)
    images = _valid_images(valid)
    model = tiny_model(root / "model")
    cases: list[Case] = []

    def predict(name: str, path: Path, *extra: str, may_succeed: bool = False, names: str | None = None) -> None:
        cases.append(
            Case(
                name,
                ["predict", str(path), "--model", str(model), "--out", str(out / name), *extra],
                names or path.name,
                may_succeed,
            )
        )

    # files that open fine (or not) but whose bytes are broken
    for key, path in images.items():
        data = path.read_bytes()
        for fraction in (0.0, 0.3, 0.7, 0.95):
            target = bad / f"cut{int(fraction * 100)}_{key}"
            target.write_bytes(data[: int(len(data) * fraction)])
            predict(f"truncated-{int(fraction * 100)}-{key}", target)
        for seed in range(3):
            target = _bit_flips(path, bad / f"flip{seed}_{key}", seed)
            predict(f"bitflip-{seed}-{key}", target, may_succeed=True)
    predict("corrupt-tile", corrupt_tile(images["tiled.tif"], bad / "corrupt_tile.tif"))
    if "image.czi" in images:
        predict("corrupt-czi-subblock", czi_variant(images["image.czi"], bad / "corrupt_subblock.czi", "subblock"))
        predict("czi-absurd-directory", czi_variant(images["image.czi"], bad / "absurd_dir.czi", "directory_count"))
    text = bad / "notes.png"
    text.write_text("this is not an image\n")
    predict("text-named-png", text)
    (bad / "notes.tif").write_text("this is not an image either\n")
    predict("text-named-tif", bad / "notes.tif")

    # arrays no model can take
    arrays = {
        "complex.tif": (_blobs() + 1j).astype(np.complex64),
        "all_nan.tif": np.full((64, 64), np.nan, np.float32),
        "some_inf.tif": np.where(_blobs() > 300, np.inf, _blobs()).astype(np.float32),
    }
    for name, array in arrays.items():
        tifffile.imwrite(bad / name, array)
        predict(f"array-{name}", bad / name)
    tifffile.imwrite(bad / "one_pixel.tif", np.ones((1, 1), np.uint16))
    predict("array-one_pixel.tif", bad / "one_pixel.tif", may_succeed=True)  # nothing to find, but no warning

    # label files evaluate and measure cannot use
    tifffile.imwrite(bad / "negative_labels.tif", _labels().astype(np.int16) - 1)
    tifffile.imwrite(bad / "nan_labels.tif", np.where(_labels() > 0, np.nan, 0).astype(np.float32))
    tifffile.imwrite(bad / "truth.tif", _labels())
    overlays = out / "overlays"
    overlays.mkdir(exist_ok=True)
    (overlays / "truth_overlay.png").write_text("the user's file")
    cases.append(
        Case(
            "evaluate-overlay-exists",
            [
                "evaluate",
                "--pred",
                str(bad / "truth.tif"),
                "--truth",
                str(bad / "truth.tif"),
                "--overlay",
                str(overlays),
            ],
            "truth_overlay.png",
        )
    )
    for name in ("negative_labels.tif", "nan_labels.tif"):
        cases.append(
            Case(f"evaluate-{name}", ["evaluate", "--pred", str(bad / name), "--truth", str(bad / "truth.tif")], name)
        )
        cases.append(
            Case(f"measure-{name}", ["measure", "--labels", str(bad / name), "--out", str(out / f"{name}.csv")], name)
        )

    # model folders that ask for too much or say nonsense
    bad_models = {
        "huge_width": {"architecture.base_channels": 100000},
        "huge_depth": {"architecture.depth": 40},
        "zero_width": {"architecture.base_channels": 0},
        "bad_normalization_method": {"normalization": {"method": "bogus"}},
        "bad_normalization_values": {"normalization": {"method": "percentile", "low": "a", "high": 99.8}},
        "normalization_not_object": {"normalization": 3},
        "negative_diameter": {"object_diameter": -5},
        "text_diameter": {"object_diameter": "big"},
        "zero_tile": {"tile_shape": [0, 0]},
        "text_tile": {"tile_shape": "large"},
    }
    for name, fields in bad_models.items():
        folder = tiny_model(root / f"model_{name}", **fields)
        cases.append(
            Case(
                f"model-{name}",
                ["predict", str(images["plain.tif"]), "--model", str(folder), "--out", str(out / name)],
                "config.json",
            )
        )
    folder = tiny_model(root / "model_nan_weights")
    _nan_weights(folder)
    cases.append(
        Case(
            "model-nan-weights",
            ["predict", str(images["plain.tif"]), "--model", str(folder), "--out", str(out / "nan")],
            "weights.safetensors",
        )
    )
    folder = tiny_model(root / "model_cut_weights")
    weights = folder / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    cases.append(
        Case(
            "model-truncated-weights",
            ["predict", str(images["plain.tif"]), "--model", str(folder), "--out", str(out / "cut")],
            "weights.safetensors",
        )
    )
    (root / "model_bad_json").mkdir(exist_ok=True)
    shutil.copy(model / "weights.safetensors", root / "model_bad_json")
    (root / "model_bad_json" / "config.json").write_text("{not json")
    cases.append(
        Case(
            "model-bad-json",
            ["predict", str(images["plain.tif"]), "--model", str(root / "model_bad_json"), "--out", str(out / "j")],
            "config.json",
        )
    )

    # arguments out of bounds
    predict("tile-zero", images["plain.tif"], "--tile", "0", names="--tile")
    predict("diameter-text", images["plain.tif"], "--diameter", "abc", names="--diameter")
    predict("diameter-negative", images["plain.tif"], "--diameter", "-3", names="--diameter")

    # outputs the disk cannot take
    (out / "taken").mkdir(exist_ok=True)
    (out / "taken" / "plain_labels.tif").mkdir(exist_ok=True)
    predict("output-is-a-folder", images["plain.tif"], names="plain_labels.tif")
    cases[-1].argv[cases[-1].argv.index("--out") + 1] = str(out / "taken")
    (out / "a_file").write_text("x")
    predict("out-is-a-file", images["plain.tif"], names="a_file")
    cases[-1].argv[cases[-1].argv.index("--out") + 1] = str(out / "a_file")

    # training on broken pairs
    pairs = root / "pairs"
    pairs.mkdir(exist_ok=True)
    for i in range(3):
        tifffile.imwrite(pairs / f"img{i}.tif", _blobs(seed=i))
        tifffile.imwrite(pairs / f"img{i}_labels.tif", _labels())
    nan_images = root / "nan_images"
    nan_images.mkdir(exist_ok=True)
    for i in range(3):
        image = _blobs(seed=i).astype(np.float32)
        if i == 1:
            image[:5, :5] = np.nan
        tifffile.imwrite(nan_images / f"img{i}.tif", image)
    negative = root / "negative_labels"
    negative.mkdir(exist_ok=True)
    for i in range(3):
        tifffile.imwrite(negative / f"img{i}_labels.tif", _labels().astype(np.int16) - (i == 2))
    train = [
        "train",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--base-channels",
        "4",
        "--depth",
        "2",
        "--patch",
        "32",
        "32",
        "--device",
        "cpu",
        "--no-amp",
    ]
    images_arg = [str(pairs / f"img{i}.tif") for i in range(3)]
    labels_arg = [str(pairs / f"img{i}_labels.tif") for i in range(3)]
    cases.append(
        Case(
            "train-nan-image",
            [
                *train,
                "--images",
                *[str(nan_images / f"img{i}.tif") for i in range(3)],
                "--labels",
                *labels_arg,
                "--out",
                str(out / "m_nan"),
            ],
            "img1.tif",
        )
    )
    cases.append(
        Case(
            "train-negative-labels",
            [
                *train,
                "--images",
                *images_arg,
                "--labels",
                *[str(negative / f"img{i}_labels.tif") for i in range(3)],
                "--out",
                str(out / "m_neg"),
            ],
            "img2_labels.tif",
        )
    )
    huge_patch = [*train[: train.index("--patch")], "--patch", "100000", "100000", *train[train.index("--patch") + 3 :]]
    cases.append(
        Case(
            "train-huge-patch",
            [*huge_patch, "--images", *images_arg, "--labels", *labels_arg, "--out", str(out / "m_big")],
            "--patch",
        )
    )
    cases.append(
        Case(
            "train-out-is-a-file",
            [*train, "--images", *images_arg, "--labels", *labels_arg, "--out", str(out / "a_file")],
            "a_file",
        )
    )
    return cases


def _nan_weights(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "weights.safetensors"
    state = load_file(str(path))
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first][...] = float("nan")
    save_file(state, str(path))


def run_case(case: Case) -> tuple[int, str]:
    """Run one case in this process: (exit code, what went to stderr)."""
    import contextlib
    import io

    from segtune.cli import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(case.argv)
    return code, stderr.getvalue()


def check(case: Case, code: int, stderr: str) -> str | None:
    """What is wrong with the outcome of ``case``, or None."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
    if "Warning:" in stderr or "Traceback" in stderr:
        return f"a raw Python warning or traceback: {stderr.strip()[-300:]}"
    if case.may_succeed and code == 0:
        return None
    if code != 2:
        return f"exit code {code}, not 2: {stderr.strip()[-300:]}"
    errors = [line for line in lines if ": error: " in line]
    if len(errors) != 1 or "Traceback" in stderr:
        return f"not one error line: {stderr.strip()[-300:]}"
    if case.names not in errors[0]:
        return f"the error does not name {case.names!r}: {errors[0]}"
    return None


if __name__ == "__main__":
    import tempfile

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="segtune-fuzz-"))
    failures = 0
    for case in build_corpus(root):
        try:
            code, stderr = run_case(case)
            problem = check(case, code, stderr)
        except BaseException as e:  # noqa: BLE001 -- a traceback is exactly what the corpus hunts
            problem = f"raised {type(e).__name__}: {e}"
        failures += problem is not None
        print(f"{'FAIL' if problem else 'ok  '} {case.name}: {problem or ''}")
    print(f"{failures} failure(s); corpus in {root}")
    sys.exit(1 if failures else 0)
