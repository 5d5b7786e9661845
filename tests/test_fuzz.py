"""Broken inputs end in one line and exit code 2, never a traceback (the corpus of tests/fuzz_corpus.py).

Two layers: the corpus of broken files, model folders, arguments and outputs, each run through
the ``segtune`` command in this process; and properties (hypothesis) over arrays and configs that
the Python API must refuse with its documented exception type, or accept.
"""

from __future__ import annotations

import atexit
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.fuzz_corpus import build_corpus, check, run_case, tiny_model

_CORPUS: dict[str, object] = {}


def _built_corpus() -> tuple[Path, dict]:
    """The corpus, written once per test session (collection needs the case names)."""
    if not _CORPUS:
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="segtune-fuzz-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)  # also when no case test runs
        _CORPUS.update(root=root, cases={case.name: case for case in build_corpus(root)})
    return _CORPUS["root"], _CORPUS["cases"]


def pytest_generate_tests(metafunc):
    if "case_name" in metafunc.fixturenames:  # one test per corpus case, named after it
        metafunc.parametrize("case_name", list(_built_corpus()[1]))


@pytest.fixture(scope="module")
def corpus():
    return _built_corpus()


def test_every_broken_input_is_one_line_and_exit_2(corpus, case_name):
    root, cases = corpus
    case = cases[case_name]
    code, stderr = run_case(case)
    problem = check(case, code, stderr)
    assert problem is None, f"{case.name}: {problem}"
    if code == 2 and case.argv[0] == "train":  # a refused training leaves no model folder behind
        out = Path(case.argv[case.argv.index("--out") + 1])
        assert not out.is_dir(), f"{case.name}: {out} was left behind"


def test_the_corpus_covers_what_the_issue_lists(corpus):
    _, cases = corpus
    for needed in (
        "corrupt-tile",
        "truncated-70-tiled.tif",
        "bitflip-0-plain.tif",
        "text-named-png",
        "array-complex.tif",
        "array-all_nan.tif",
        "model-huge_width",
        "model-nan-weights",
        "model-negative_diameter",
        "model-zero_tile",
        "model-bad_normalization_values",
        "train-nan-image",
        "train-negative-labels",
        "train-huge-patch",
        "output-is-a-folder",
    ):
        assert needed in cases, needed


# --- properties: the Python API refuses with its documented exception type, or works ----------


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "m")


_dtypes = st.one_of(
    hnp.integer_dtypes(endianness="="),
    hnp.unsigned_integer_dtypes(endianness="="),
    hnp.floating_dtypes(endianness="=", sizes=(32, 64)),
    hnp.complex_number_dtypes(endianness="="),
    st.just(np.dtype(bool)),
    st.just(np.dtype("U3")),
    st.just(np.dtype(object)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(array=hnp.arrays(_dtypes, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=12)))
def test_predict_on_any_array_returns_labels_or_raises_value_error(model_folder, array):
    from segtune.core.models.store import load_model
    from segtune.core.predict import predict

    model = _cached_model(model_folder, load_model)
    try:
        result = predict(model, array)
    except ValueError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert array.size and array.dtype.kind in "biuf"
    assert np.isfinite(array.astype(np.float32)).all()
    assert result.probabilities.shape[-2:] == array.shape
    assert np.isfinite(result.probabilities).all()  # accepted input gives real probabilities


_models: dict[str, object] = {}


def _cached_model(folder, load):
    if str(folder) not in _models:
        _models[str(folder)] = load(folder)
    return _models[str(folder)]


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from(
        [
            "normalization",
            "object_diameter",
            "tile_shape",
            "architecture.base_channels",
            "architecture.depth",
            "architecture.in_channels",
            "head",
            "classes",
        ]
    ),
    value=_json_values,
)
def test_any_config_value_loads_or_is_a_model_format_error_naming_the_file(model_folder, tmp_path_factory, key, value):
    from segtune.core.models.store import ModelFormatError, load_model

    config = json.loads((model_folder / "config.json").read_text())
    if key.startswith("architecture."):
        config["architecture"][key.split(".", 1)[1]] = value
    else:
        config[key] = value
    folder = tmp_path_factory.mktemp("config")
    (folder / "weights.safetensors").write_bytes((model_folder / "weights.safetensors").read_bytes())
    (folder / "config.json").write_text(json.dumps(config))
    try:
        load_model(folder)
    except ModelFormatError as e:
        assert str(folder) in str(e)


@settings(max_examples=30, deadline=None)
@given(data=st.binary(min_size=0, max_size=400), suffix=st.sampled_from([".tif", ".png", ".czi", ".ome.tif", ".jpg"]))
def test_any_bytes_open_or_raise_image_read_error_naming_the_file(tmp_path_factory, data, suffix):
    from segtune.core.io import ImageReadError, open_image

    path = tmp_path_factory.mktemp("bytes") / f"random{suffix}"
    path.write_bytes(data)
    try:
        image = open_image(path)
        image.data.compute()
    except ImageReadError as e:
        assert str(path) in str(e)
