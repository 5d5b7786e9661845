"""Model folders: save/load round-trip, atomic saves, refusal of pickle files, the registry."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from segtune.core.models import registry
from segtune.core.models.store import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    ModelFormatError,
    default_config,
    load_model,
    read_config,
    save_model,
)
from segtune.core.models.unet import UNet


def _model(**kwargs):
    torch.manual_seed(0)
    return UNet(**{"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "depth": 2, "base_channels": 4, **kwargs})


def test_round_trip_gives_identical_outputs_and_config(tmp_path):
    model = _model(norm="batch")
    # make the batch-norm running statistics non-trivial so buffers are checked too
    model.train()
    model(torch.randn(4, 1, 16, 16) * 3 + 1)
    model.eval()
    config = default_config(model.architecture, tile_shape=[16, 16], metrics={"val_f1": 0.5})
    folder = save_model(model, config, tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    loaded, loaded_config = load_model(folder)
    assert not loaded.training
    x = torch.randn(1, 1, 20, 24)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded_config["head"] == "three_class"
    assert loaded_config["classes"] == ["background", "interior", "boundary"]
    assert loaded_config["tile_shape"] == [16, 16]
    assert loaded_config["metrics"] == {"val_f1": 0.5}
    assert loaded_config["normalization"] == {"method": "percentile", "low": 1.0, "high": 99.8}
    assert loaded_config["segtune_version"]
    assert read_config(folder) == loaded_config


def test_save_fills_in_architecture_and_head(tmp_path):
    model = _model(out_channels=1, spatial_dims=3)
    save_model(model, {"tile_shape": [8, 8, 8]}, tmp_path / "m")
    config = json.loads((tmp_path / "m" / CONFIG_NAME).read_text())
    assert config["architecture"]["spatial_dims"] == 3
    assert config["head"] == "binary"


def test_save_refuses_to_overwrite_unless_asked_and_keeps_other_files(tmp_path):
    model = _model()
    folder = save_model(model, default_config(model.architecture), tmp_path / "m")
    (folder / "MODEL_CARD.md").write_text("card")
    with pytest.raises(FileExistsError, match="overwrite"):
        save_model(model, default_config(model.architecture), folder)
    other = _model()
    torch.nn.init.constant_(other.head.weight, 0.25)
    save_model(other, default_config(other.architecture, metrics={"v": 2}), folder, overwrite=True)
    loaded, config = load_model(folder)
    assert torch.all(loaded.head.weight == 0.25)
    assert config["metrics"] == {"v": 2}
    assert (folder / "MODEL_CARD.md").read_text() == "card"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_save_rejects_a_config_that_does_not_describe_the_model(tmp_path):
    model = _model()
    with pytest.raises(ValueError, match="does not describe the model"):
        save_model(model, default_config({**model.architecture, "base_channels": 8}), tmp_path / "m")
    with pytest.raises(ValueError, match="JSON"):
        save_model(model, default_config(model.architecture, metrics={"f1": float("nan")}), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_device_auto_is_accepted(tmp_path):
    model = _model()
    save_model(model, default_config(model.architecture), tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m", device="auto")
    assert next(loaded.parameters()).device.type in ("cpu", "cuda", "mps")


class _Exploit:
    """Unpickling this creates a marker file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_bytes(marker):
    return pickle.dumps({"state_dict": _Exploit(marker)})


@pytest.mark.parametrize("name", ["model.pt", "weights.pth", "model.pkl", "last.ckpt"])
def test_folder_with_a_pickle_instead_of_safetensors_is_refused(tmp_path, name):
    folder = tmp_path / "m"
    folder.mkdir()
    marker = tmp_path / "PWNED"
    (folder / name).write_bytes(_pickle_bytes(marker))
    (folder / CONFIG_NAME).write_text(
        json.dumps(default_config({"spatial_dims": 2, "in_channels": 1, "out_channels": 1}))
    )
    with pytest.raises(ModelFormatError, match="never loads pickle"):
        load_model(folder)
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_is_not_executed(tmp_path):
    model = _model()
    folder = save_model(model, default_config(model.architecture), tmp_path / "m")
    marker = tmp_path / "PWNED"
    (folder / WEIGHTS_NAME).write_bytes(_pickle_bytes(marker))
    with pytest.raises(ModelFormatError, match="not a valid safetensors file"):
        load_model(folder)
    assert not marker.exists()
    # the crafted file really is live: unpickling it would have created the marker
    pickle.loads((folder / WEIGHTS_NAME).read_bytes())
    assert marker.exists()


def test_torch_save_file_as_weights_is_refused(tmp_path):
    model = _model()
    folder = save_model(model, default_config(model.architecture), tmp_path / "m")
    torch.save(model.state_dict(), folder / WEIGHTS_NAME)
    with pytest.raises(ModelFormatError, match="not a valid safetensors file"):
        load_model(folder)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    model = _model()
    folder = save_model(model, default_config(model.architecture), tmp_path / "m")
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["architecture"]["base_channels"] = 8
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="does not fit the architecture"):
        load_model(folder)


def test_bad_configs_are_refused(tmp_path):
    model = _model()
    folder = save_model(model, default_config(model.architecture), tmp_path / "m")
    (folder / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        load_model(folder)
    (folder / CONFIG_NAME).write_text(json.dumps({"head": "binary"}))
    with pytest.raises(ModelFormatError, match="no 'architecture'"):
        load_model(folder)
    (folder / CONFIG_NAME).write_text(json.dumps(default_config(model.architecture, head="binary")))
    with pytest.raises(ModelFormatError, match="binary head needs out_channels 1"):
        load_model(folder)


def test_missing_model_lists_known_names(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no bundled model of that name \(bundled models: nuclei-2d"):
        load_model("no-such-model")
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        (tmp_path / "f.pt").write_bytes(b"x")
        load_model(tmp_path / "f.pt")
    with pytest.raises(ModelFormatError, match="no weights.safetensors"):
        (tmp_path / "empty").mkdir()
        load_model(tmp_path / "empty")


def test_registry_resolves_bundled_names(tmp_path, monkeypatch):
    model = _model()
    save_model(model, default_config(model.architecture, description="Nuclei, 2D, test"), tmp_path / "nuc")
    monkeypatch.setattr(registry, "PRETRAINED_DIR", tmp_path)
    monkeypatch.setattr(registry, "BUNDLED_MODELS", {"nuclei-test": "nuc", "absent": "absent"})
    assert registry.resolve_model("nuclei-test") == tmp_path / "nuc"
    assert [(m.name, m.description) for m in registry.list_models()] == [("nuclei-test", "Nuclei, 2D, test")]
    loaded, config = load_model("nuclei-test")
    assert config["description"] == "Nuclei, 2D, test"
    with pytest.raises(FileNotFoundError, match="nuclei-test, absent"):
        registry.resolve_model("other")


def test_model_card_gives_the_description(tmp_path):
    model = _model()
    folder = save_model(model, default_config(model.architecture), tmp_path / "m")
    (folder / "MODEL_CARD.md").write_text("# Nuclei model\n\nSegments Hoechst nuclei in 2D.\n\nMore.")
    assert registry.model_description(folder) == "Segments Hoechst nuclei in 2D."


def test_bundled_table_entries_are_complete():
    for model in registry.list_models():
        for name in ("config.json", "weights.safetensors", "MODEL_CARD.md"):
            assert (model.folder / name).is_file(), f"bundled model {model.name} lacks {name}"
        load_model(model.name)


def test_new_folder_appears_whole_even_when_killed(tmp_path):
    """kill -9 during many saves of a fresh folder never leaves a half-written model."""
    script = (
        "import sys, torch\n"
        "from segtune.core.models.unet import UNet\n"
        "from segtune.core.models.store import save_model, default_config\n"
        "m = UNet(2, 1, 1, depth=3, base_channels=16)\n"
        "i = 0\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    save_model(m, default_config(m.architecture, metrics={'i': i}), sys.argv[1], overwrite=True)\n"
        "    i += 1\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "m")], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    import time

    time.sleep(1.0)
    os.kill(proc.pid, 9)
    proc.wait()
    _, config = load_model(tmp_path / "m")
    assert config["metrics"]["i"] >= 0
