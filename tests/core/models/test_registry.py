"""The table of bundled models: what is listed, how names and paths resolve, one-line descriptions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segtune.core.models import registry


def _folder(path: Path, config: dict | None = None, card: str | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config if config is not None else {}))
    if card is not None:
        (path / "MODEL_CARD.md").write_text(card)
    return path


def test_the_shipped_table_lists_every_model_in_table_order():
    models = registry.list_models()
    assert (
        [m.name for m in models]
        == list(registry.BUNDLED_MODELS)
        == [
            "nuclei-2d",
            "membranes-2d",
            "nuclei-3d",
            "nuclei-he-2d",
        ]
    )
    for model in models:
        assert model.folder == registry.PRETRAINED_DIR / registry.BUNDLED_MODELS[model.name]
        assert registry.resolve_model(model.name) == model.folder
        assert model.description == json.loads((model.folder / "config.json").read_text())["description"]


def test_names_and_paths_resolve_and_a_folder_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "PRETRAINED_DIR", tmp_path / "bundled")
    monkeypatch.setattr(registry, "BUNDLED_MODELS", {"cells": "cells-v1", "gone": "gone-v1"})
    bundled = _folder(tmp_path / "bundled" / "cells-v1", {"description": "Bundled cells."})
    assert [m.name for m in registry.list_models()] == ["cells"]  # 'gone' has no folder: not listed
    assert registry.resolve_model("cells") == bundled
    own = _folder(tmp_path / "work" / "cells")
    monkeypatch.chdir(tmp_path / "work")
    assert registry.resolve_model("cells") == Path("cells")  # a folder of that name here is what you get
    assert registry.resolve_model(own) == own
    with pytest.raises(FileNotFoundError, match=r"bundled model 'gone' is listed but its folder .*gone-v1 is missing"):
        registry.resolve_model("gone")
    (tmp_path / "work" / "weights.pt").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="model 'weights.pt' is a file, not a model folder"):
        registry.resolve_model("weights.pt")
    with pytest.raises(FileNotFoundError, match=r"no bundled model of that name \(bundled models: cells, gone\)"):
        registry.resolve_model("nuclei")


def test_description_comes_from_config_then_card_then_architecture(tmp_path):
    first = _folder(tmp_path / "a", {"description": "From the config.\nSecond line."}, card="# Title\n\nFrom the card.")
    assert registry.model_description(first) == "From the config."
    card = _folder(tmp_path / "b", {}, card="# Title\n<!-- note -->\n---\n\nFrom the card.\n\nMore.")
    assert registry.model_description(card) == "From the card."
    bare = _folder(tmp_path / "c", {"head": "three_class", "architecture": {"spatial_dims": 3}})
    assert registry.model_description(bare) == "3D U-Net, three_class head"
    broken = tmp_path / "d"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert registry.model_description(broken) == "(no description)"
