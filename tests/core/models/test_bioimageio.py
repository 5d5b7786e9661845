"""bioimage.io round trip: export a bundled model, validate, run bioimageio.core's test, import, same prediction."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from segtune.cli import main
from segtune.core.models.bioimageio import BioimageioUnsupported, load_bioimageio
from segtune.core.models.store import load_model
from segtune.core.predict import ObjectOptions, predict
from segtune.core.synthetic import synthetic_nuclei


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bioimageio") / "nuclei-2d.zip"
    assert main(["export-bioimageio", "nuclei-2d", str(out)]) == 0
    return out


def test_export_validates_and_passes_bioimageio_core_test(package: Path) -> None:
    from bioimageio.core import test_model
    from bioimageio.spec import load_description
    from bioimageio.spec.model import v0_5

    names = set(zipfile.ZipFile(package).namelist())
    assert {
        "rdf.yaml",
        "weights.pt",
        "weights_torchscript.pt",
        "unet.py",
        "README.md",
        "test_input.npy",
        "test_output.npy",
    } <= names
    description = load_description(package, format_version="latest")
    assert isinstance(description, v0_5.ModelDescr), description.validation_summary
    assert description.validation_summary.status == "valid-format"
    assert description.format_version == v0_5.ModelDescr.implemented_format_version
    steps = [s.id for s in description.inputs[0].preprocessing]
    assert "scale_range" in steps and description.outputs[0].postprocessing[0].id == "softmax"
    assert any("Coelho" in c.text for c in description.cite) and any("U-Net" in c.text for c in description.cite)
    assert "NIH3T3" in zipfile.ZipFile(package).read("README.md").decode()
    summary = test_model(package)  # bioimageio.core predicts the test input with each weight format
    assert summary.status == "passed", summary.format()


def test_import_back_predicts_as_the_original(package: Path, tmp_path: Path) -> None:
    image = synthetic_nuclei((200, 240), diameter=24.0, seed=5).image
    original = predict(load_model("nuclei-2d"), image, device="cpu", instances=True)
    imported = predict(load_model(package), image, device="cpu", instances=True)
    assert np.abs(np.asarray(original.probabilities) - np.asarray(imported.probabilities)).max() <= 1e-4
    np.testing.assert_array_equal(original.labels, imported.labels)

    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(package).extractall(unpacked)
    model, config = load_bioimageio(unpacked)
    assert config["head"] == "three_class" and config["normalization"]["method"] == "percentile"

    # a package with TorchScript weights only runs through TorchScript's own runtime
    (unpacked / "weights.pt").unlink()
    text = (unpacked / "rdf.yaml").read_text()
    start = text.index("  pytorch_state_dict:")
    end = text.index("  torchscript:")
    (unpacked / "rdf.yaml").write_text(text[:start] + text[end:].replace("    parent: pytorch_state_dict\n", ""))
    scripted, _ = load_bioimageio(unpacked / "rdf.yaml")
    assert isinstance(scripted.script, torch.jit.ScriptModule)
    again = predict((scripted, config), image, device="cpu", diameter=original.diameter)
    assert np.abs(np.asarray(original.probabilities) - np.asarray(again.probabilities)).max() <= 1e-4


def test_cli_predict_with_a_package_and_unsupported_packages(package: Path, tmp_path: Path, capsys) -> None:
    import tifffile

    image = synthetic_nuclei((160, 160), diameter=20.0, seed=2).image
    tifffile.imwrite(tmp_path / "cells.tif", image)
    assert (
        main(
            [
                "predict",
                "--model",
                str(package),
                str(tmp_path / "cells.tif"),
                "--out",
                str(tmp_path / "out"),
                "--instances",
            ]
        )
        == 0
    )
    written = tifffile.imread(tmp_path / "out" / "cells_labels.tif")
    expected = predict(
        load_model("nuclei-2d"), image, device="cpu", instances=True, objects=ObjectOptions(min_size="auto")
    ).labels[0, 0]
    np.testing.assert_array_equal(written, expected)

    # unsupported: architecture code only (no weights segtune can build), and not a package at all
    foreign = tmp_path / "foreign"
    zipfile.ZipFile(package).extractall(foreign)
    rdf = yaml.safe_load((foreign / "rdf.yaml").read_text())
    del rdf["weights"]["torchscript"]
    rdf["weights"]["pytorch_state_dict"]["architecture"]["callable"] = "OtherNet"
    rdf["config"] = {"other_tool": rdf["config"].pop("segtune")}
    (foreign / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    capsys.readouterr()
    assert main(["predict", "--model", str(foreign), str(tmp_path / "cells.tif"), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot run this bioimage.io model" in err and "OtherNet" in err
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    assert (
        main(
            [
                "predict",
                "--model",
                str(tmp_path / "junk.zip"),
                str(tmp_path / "cells.tif"),
                "--out",
                str(tmp_path / "o3"),
            ]
        )
        == 2
    )
    assert "junk.zip" in capsys.readouterr().err
    with pytest.raises(BioimageioUnsupported):
        load_bioimageio(tmp_path / "junk.zip")
