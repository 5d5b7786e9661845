"""The widget's Model and Evaluate & Export tabs, driven through their attributes in a real viewer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from segtune.core.io import open_image, read_labels
from segtune.core.metrics import evaluate, overlay
from tests.napari.conftest import wait_for

pytestmark = pytest.mark.gui


def test_manifest_widget_opens_the_dock(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-segtune", "segtune")
    assert [widget.tabs.tabText(i).replace("&&", "&") for i in range(widget.tabs.count())][:1] == ["Model"]
    assert "Evaluate & Export" in [widget.tabs.tabText(i).replace("&&", "&") for i in range(widget.tabs.count())]


@pytest.mark.parametrize(("network", "name"), [("U-Net, ResNet-18 encoder", "resnet_unet"), ("UNet++", "unetpp")])
def test_new_model_other_networks(widget, network: str, name: str, errors) -> None:
    panel = widget.model_panel
    panel.new_dims.setCurrentText("2D")
    panel.new_size.setCurrentText("tiny (quick experiments)")
    panel.new_network.setCurrentText(network)
    panel.new_button.click()
    model = widget.state.model
    assert model.architecture["name"] == name and hasattr(model, "encoder_parameters")
    assert model(torch.zeros(1, 1, 40, 50)).shape == (1, 3, 40, 50)


def test_new_model_save_and_load_round_trip(widget, tmp_path: Path, errors) -> None:
    panel = widget.model_panel
    # the bundled model shown is already in use (none in an installation without bundled models)
    assert (widget.state.model is None) == (panel.bundled.count() == 0)
    panel.new_dims.setCurrentText("2D")
    panel.new_size.setCurrentText("tiny (quick experiments)")
    panel.new_button.click()
    model = widget.state.model
    assert model is not None and model.architecture["base_channels"] == 8
    assert widget.state.unsaved and "in memory only" in panel.info.text()
    assert "cpu" in panel.device_label.text()

    folder = tmp_path / "my_model"
    panel.ask_save_folder = lambda title: str(folder)
    panel.save_button.click()
    assert (folder / "weights.safetensors").is_file()
    assert widget.state.folder == folder and not widget.state.unsaved
    assert str(folder) in panel.info.text()

    # saving again over the folder asks; "no" keeps the folder untouched
    asked = []
    panel.confirm_overwrite = lambda path: asked.append(path) or False
    before = (folder / "weights.safetensors").read_bytes()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    panel.save_button.click()
    assert asked == [folder]
    assert (folder / "weights.safetensors").read_bytes() == before

    # load it back through "Load a model folder"
    panel.new_button.click()
    panel.ask_folder = lambda title: str(folder)
    panel.load_folder_button.click()
    loaded = widget.state.model
    assert loaded is not model and widget.state.folder == folder
    first_saved = next(loaded.parameters())
    assert not torch.equal(first_saved, next(model.parameters()))  # the unsaved +1 was not kept
    assert errors() == []


def test_loading_a_non_model_folder_is_a_plain_notification(widget, tmp_path: Path, errors) -> None:
    (tmp_path / "model.pt").write_bytes(b"not really a pickle")
    model = widget.state.model
    widget.model_panel.ask_folder = lambda title: str(tmp_path)
    widget.model_panel.load_folder_button.click()
    assert widget.state.model is model  # unchanged
    assert len(errors()) == 1 and "pickle" in errors()[0]


def test_evaluate_shows_the_core_numbers_and_an_overlay(widget, qtbot, sample_2d, errors) -> None:
    viewer = widget.viewer
    truth = sample_2d["labels"].astype(np.uint16)
    pred = truth.copy()
    components, _ = ndimage.label(truth > 0, structure=np.ones((3, 3)))
    # an object touching no other, so that removing it is a miss at the object level too
    alone = next(
        i for i in np.unique(truth)[1:] if (components == components[truth == i][0]).sum() == (truth == i).sum()
    )
    pred[truth == alone] = 0  # one object missed
    y, x = np.argwhere(np.lib.stride_tricks.sliding_window_view(truth, (14, 14)).max(axis=(2, 3)) == 0)[0]
    pred[y + 2 : y + 12, x + 2 : x + 12] = 999  # one false object, away from the others
    scale = (0.325, 0.325)
    viewer.add_labels(truth, name="truth", scale=scale)
    viewer.add_labels(pred, name="pred", scale=scale)
    panel = widget.evaluate_panel
    panel.pred_layer.set_layer(viewer.layers["pred"])
    panel.truth_layer.set_layer(viewer.layers["truth"])
    panel.overlay_level.setCurrentText("object")
    panel.evaluate_button.click()
    assert wait_for(qtbot, panel.job) == "done"

    expected = evaluate(pred, truth)
    assert panel.results == expected
    shown = panel.table_values()
    assert shown["Pixels: F1 (Dice)"] == f"{expected['pixel']['f1']:.3f}"
    assert shown["Components: recall"] == f"{expected['object']['recall']:.3f}"
    assert shown["Matched: AP at IoU 0.5"] == f"{expected['matched']['ap_at_0.5']:.3f}"
    assert shown["Objects in truth"] == str(expected["matched"]["n_truth"])  # instances, touching or not
    assert shown["Objects predicted"] == str(expected["matched"]["n_pred"])
    assert list(shown)[0] == "Matched: F1 at IoU 0.5"  # seen without scrolling, and in the line above
    assert f"Matched F1 at IoU 0.5: {expected['matched']['f1_at_0.5']:.3f}" in panel.summary.text()
    assert expected["object"]["fp"] >= 1 and expected["object"]["fn"] >= 1

    rgb = viewer.layers["pred vs truth (object)"]
    assert rgb.rgb and viewer.layers[-1].name == rgb.name  # on top of the labels it compares
    assert rgb.blending != "additive"  # green, red and blue must not mix with the labels' colours
    colours = overlay(pred, truth, level="object")
    np.testing.assert_array_equal(rgb.data[..., :3], colours)
    np.testing.assert_array_equal(rgb.data[..., 3] > 0, colours.any(axis=-1))  # see-through where nothing is
    np.testing.assert_allclose(rgb.scale, scale)
    assert errors() == []


def test_evaluate_mismatched_shapes_is_a_plain_notification(widget, errors) -> None:
    viewer = widget.viewer
    viewer.add_labels(np.zeros((64, 64), np.uint8), name="a")
    viewer.add_labels(np.zeros((32, 64), np.uint8), name="b")
    panel = widget.evaluate_panel
    panel.pred_layer.set_layer(viewer.layers["a"])
    panel.truth_layer.set_layer(viewer.layers["b"])
    panel.evaluate_button.click()
    assert panel.job is None
    (message,) = errors()
    assert "64 x 64" in message and "32 x 64" in message and "same size" in message


def test_export_masks_csv_rois_read_back_identical(widget, qtbot, sample_2d, tmp_path: Path, errors) -> None:
    viewer = widget.viewer
    labels, image = sample_2d["labels"], sample_2d["image"]
    scale = (0.325, 0.325)
    viewer.add_image(image, name="nuclei", scale=scale)
    viewer.add_labels(labels, name="nuclei labels", scale=scale)
    panel = widget.evaluate_panel
    panel.export_layer.set_layer(viewer.layers["nuclei labels"])
    panel.export_image.set_layer(viewer.layers["nuclei"])
    panel.export_folder.setText(str(tmp_path))

    panel.export_labels_button.click()
    assert wait_for(qtbot, panel.job) == "done"
    (tif,) = panel.last_exported
    assert tif == tmp_path / "nuclei_labels.ome.tif"
    np.testing.assert_array_equal(read_labels(tif), labels)
    assert open_image(tif).physical_pixel_sizes[1:] == pytest.approx(scale)

    panel.export_csv_button.click()
    assert wait_for(qtbot, panel.job) == "done"
    (csv,) = panel.last_exported
    table = pd.read_csv(csv)
    assert sorted(table["label"]) == sorted(set(np.unique(labels)) - {0})
    first = table.iloc[0]
    mask = labels == first["label"]
    assert first["n_pixels"] == mask.sum()
    assert first["area"] == pytest.approx(mask.sum() * 0.325**2)
    assert first["mean_intensity_nuclei"] == pytest.approx(image[mask].mean())

    panel.export_rois_button.click()
    assert wait_for(qtbot, panel.job) == "done"
    (rois,) = panel.last_exported
    from segtune.core.rois import read_imagej_rois

    np.testing.assert_array_equal(read_imagej_rois(rois, labels.shape), labels)

    # a second export asks; answering no leaves the file as it was
    asked = []
    panel.confirm_overwrite = lambda path: asked.append(path) or False
    stamp = tif.stat().st_mtime_ns
    viewer.layers["nuclei labels"].data = np.zeros_like(labels)
    panel.export_labels_button.click()
    assert asked == [tif] and tif.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(read_labels(tif), labels)
    # answering yes replaces it
    panel.confirm_overwrite = lambda path: True
    panel.export_labels_button.click()
    assert wait_for(qtbot, panel.job) == "done"
    assert read_labels(tif).max() == 0
    assert errors() == []


def test_export_model_folder_and_rois_need_2d(widget, qtbot, tmp_path: Path, errors) -> None:
    viewer = widget.viewer
    widget.model_panel.new_size.setCurrentText("tiny (quick experiments)")
    widget.model_panel.new_button.click()
    panel = widget.evaluate_panel
    panel.export_folder.setText(str(tmp_path))
    panel.export_model_button.click()
    (folder,) = panel.last_exported
    from segtune.core.models.store import load_model

    model, config = load_model(folder)
    for a, b in zip(model.state_dict().values(), widget.state.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    panel.export_bioimageio_button.click()  # an unsaved model goes through a temporary folder
    assert wait_for(qtbot, panel.job) == "done"
    (package,) = panel.last_exported
    assert package.name.endswith(".bioimageio.zip")
    packaged, _ = load_model(package)
    for a, b in zip(packaged.state_dict().values(), widget.state.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    viewer.add_labels(np.zeros((3, 16, 16), np.uint8), name="stack")
    panel.export_layer.set_layer(viewer.layers["stack"])
    panel.export_rois_button.click()
    (message,) = errors()
    assert "2D" in message


def test_bundled_model_is_listed_with_its_card_line_and_loads(widget, errors) -> None:
    from segtune.core.models.registry import list_models

    models = list_models()
    assert [m.name for m in models] == ["nuclei-2d", "membranes-2d", "nuclei-3d", "nuclei-he-2d"]
    panel = widget.model_panel
    assert [panel.bundled.itemText(i) for i in range(panel.bundled.count())] == [m.name for m in models]
    panel.bundled.setCurrentIndex(0)
    assert panel.bundled_description.text() == models[0].description
    panel.load_bundled_button.click()
    assert widget.state.folder == models[0].folder and not widget.state.unsaved
    assert models[0].name in panel.info.text() and str(models[0].folder) in panel.info.text()
    assert errors() == []


def test_bundled_list_reads_the_registry(make_napari_viewer, monkeypatch, tmp_path: Path, errors) -> None:
    """A model folder registered as bundled (a tiny stand-in) is listed with its description and loads."""
    from segtune.core.models import registry
    from segtune.core.models.store import default_config, save_model
    from segtune.core.models.unet import build_model, default_architecture

    architecture = default_architecture(spatial_dims=2, in_channels=1, out_channels=3, depth=2, base_channels=8)
    save_model(
        build_model(architecture),
        default_config(architecture, description="Tiny stand-in for nuclei."),
        tmp_path / "tiny",
    )
    monkeypatch.setattr(registry, "PRETRAINED_DIR", tmp_path)
    monkeypatch.setattr(registry, "BUNDLED_MODELS", {"tiny-nuclei": "tiny"})
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-segtune", "segtune")
    panel = widget.model_panel
    assert panel.bundled.itemText(0) == "tiny-nuclei"
    assert panel.bundled_description.text() == "Tiny stand-in for nuclei."
    panel.load_bundled_button.click()
    assert widget.state.folder == tmp_path / "tiny" and widget.state.name == "tiny-nuclei"
    assert "Tiny stand-in for nuclei." in panel.info.text()
    assert errors() == []
