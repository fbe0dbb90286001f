"""Model files are checked for stored code by content, not by name (issue 23, item 1).

Each Lambda here appends to a marker file when it runs, so "refused" is checked the
way it matters: the marker stays absent without trust, and appears once the same
file is loaded with trust (tf_keras calls the layer while it rebuilds the model).
Files are tried in every format tf_keras reads (HDF5 under any name, a .keras zip
archive, a SavedModel folder) and with the stored JSON respelled (compact,
indented, unicode-escaped, a decoy duplicate key), since the old check looked for
one exact spelling in files with one of two name endings.
"""

import io
import json
import re
import shutil
import zipfile

import h5py
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecomp import models
from edgecomp._keras import keras
from edgecomp.errors import ModelError

TRUST_HINT = r"model.trust: true \(or --trust_model\)"


def marking_lambda(marker):
    """A Lambda layer whose function appends to ``marker`` when it runs (the path is a default argument,
    so the byte code tf_keras stores needs no globals)."""
    return keras.layers.Lambda(lambda t, m=str(marker): (open(m, "a").close(), t * 2.0)[1], name="marking")


def build(kind, marker):
    """A tiny model: ``plain``, ``lambda`` (top level), ``nested`` (a Lambda inside a Sequential inside a
    Functional model), ``tf_op`` (``x * 3``, a TFOpLambda) or ``slicing`` (``x[:, :3]``, plain slicing)."""
    inputs = keras.Input((4,))
    x = inputs
    if kind == "lambda":
        x = marking_lambda(marker)(x)
    elif kind == "nested":
        inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), marking_lambda(marker)], name="inner")
        x = inner(x)
    elif kind == "tf_op":
        x = x * 3.0
    elif kind == "slicing":
        x = x[:, :3]
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    if marker.exists():
        marker.unlink()  # building called the layer: it ran then, by the test's own hand
    return model


CODE_KINDS = {"lambda", "nested", "tf_op"}  # what must never load without trust


def respell(text: str, spelling: str) -> str:
    """The same JSON written another way: what tf_keras parses is unchanged."""
    data = json.loads(text)
    if spelling == "compact":
        return json.dumps(data, separators=(",", ":"))
    if spelling == "indented":
        return json.dumps(data, indent=2, sort_keys=True)
    if spelling == "escaped":  # "\u004cambda": the same string to json.loads
        return json.dumps(data).replace('"Lambda"', '"\\u004cambda"')
    if spelling == "decoy":  # a duplicate key; json.loads keeps the last
        return re.sub(r'"class_name": "Lambda"', '"class_name": "Dense", "class_name": "Lambda"', json.dumps(data))
    return text


def h5_bytes(model, spelling="default") -> bytes:
    buffer = io.BytesIO(models.to_h5_bytes(model))
    with h5py.File(buffer, "r+") as handle:
        raw = handle.attrs["model_config"]
        handle.attrs["model_config"] = respell(raw.decode() if isinstance(raw, bytes) else raw, spelling)
    return buffer.getvalue()


def keras_zip_bytes(model, tmp_path, spelling="default") -> bytes:
    original = tmp_path / "original.keras"
    model.save(original)
    out = io.BytesIO()
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            content = source.read(info)
            if info.filename == "config.json":
                content = respell(content.decode(), spelling).encode()
            target.writestr(info, content)
    original.unlink()
    return out.getvalue()


def assert_refused_and_not_run(path, marker, expected="Lambda layers, which run code"):
    with pytest.raises(ModelError) as refused:
        models.load(path)
    message = str(refused.value)
    assert "\n" not in message and expected in message and re.search(TRUST_HINT, message), message
    assert not marker.exists(), "the Lambda ran although the file was refused"


def assert_loads_with_trust(path, marker):
    model = models.load(path, trust=True)
    assert model.output_shape == (None, 2)
    assert marker.exists(), "the marker never appears, so its absence above proves nothing"


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "lambda_ran"


@pytest.mark.parametrize("name", ["model.h5", "model.hdf5", "model.keras", "model.model", "model"])
@pytest.mark.parametrize("spelling", ["default", "compact"])
def test_hdf5_lambda_is_refused_under_any_name_and_spelling(tmp_path, marker, name, spelling):
    path = tmp_path / name
    path.write_bytes(h5_bytes(build("lambda", marker), spelling))
    assert_refused_and_not_run(path, marker)
    assert_loads_with_trust(path, marker)


@pytest.mark.parametrize("spelling", ["default", "compact"])
def test_keras_archive_lambda_is_refused(tmp_path, marker, spelling):
    path = tmp_path / "model.keras"
    path.write_bytes(keras_zip_bytes(build("lambda", marker), tmp_path, spelling))
    assert_refused_and_not_run(path, marker)
    assert_loads_with_trust(path, marker)


@pytest.mark.parametrize("spelling", ["default", "compact"])
def test_saved_model_lambda_is_refused(tmp_path, marker, spelling):
    from tf_keras.protobuf import saved_metadata_pb2

    path = tmp_path / "saved"
    build("lambda", marker).save(path, save_format="tf")
    if marker.exists():
        marker.unlink()  # saving traced the layer
    metadata_file = path / "keras_metadata.pb"
    metadata = saved_metadata_pb2.SavedMetadata.FromString(metadata_file.read_bytes())
    for node in metadata.nodes:
        node.metadata = respell(node.metadata, spelling)
    metadata_file.write_bytes(metadata.SerializeToString())
    assert_refused_and_not_run(path, marker)
    assert_loads_with_trust(path, marker)


def test_lambda_in_a_nested_model_is_refused(tmp_path, marker):
    path = tmp_path / "nested.model"
    path.write_bytes(h5_bytes(build("nested", marker), "compact"))
    assert_refused_and_not_run(path, marker)
    assert_loads_with_trust(path, marker)


def test_serialized_lambda_outside_a_lambda_layer_is_refused(tmp_path, marker):
    from tf_keras.src.utils import generic_utils

    original = tmp_path / "plain.keras"
    build("plain", marker).save(original)
    config = json.loads(zipfile.ZipFile(original).read("config.json"))
    function = generic_utils.func_dump(lambda t, m=str(marker): (open(m, "a").close(), t)[1])
    config["config"]["layers"][-1]["config"]["activation"] = {"class_name": "__lambda__", "config": {"value": function}}
    path = tmp_path / "activation.keras"
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            target.writestr(info, json.dumps(config) if info.filename == "config.json" else source.read(info))
    assert_refused_and_not_run(path, marker, "a serialized Python function, which runs code")


@pytest.mark.parametrize("config, expected", [
    ({"class_name": "Lambda", "config": {}}, {"Lambda"}),
    ({"layers": [{"layer": {"config": {"layers": [{"class_name": "Lambda"}]}}}]}, {"Lambda"}),
    ({"class_name": "Dense", "registered_name": "keras.layers>Lambda"}, {"Lambda"}),
    ({"class_name": "TFOpLambda", "config": {"function": "math.multiply"}}, {"TFOpLambda"}),
    ({"class_name": "SlicingOpLambda", "config": {"function": "__operators__.getitem"}}, set()),
    ({"class_name": "SlicingOpLambda", "config": {"function": "io.write_file"}}, {"SlicingOpLambda"}),
    ({"class_name": "ClassMethod", "config": {"cls_symbol": "RaggedTensor"}}, {"ClassMethod"}),
    ({"class_name": "DropoutWrapper", "config": {"dropout_fn_type": "lambda"}}, {models.SERIALIZED_FUNCTION}),
    ({"activation": {"class_name": "__lambda__", "config": {"value": []}}}, {models.SERIALIZED_FUNCTION}),
    ({"class_name": "Dense", "config": {"name": "Lambda", "activation": "lambda"}}, set()),
])
def test_stored_code_walks_the_whole_config(config, expected):
    assert models.stored_code(config) == expected


def test_tf_keras_safe_mode_backs_up_the_check(tmp_path, marker, monkeypatch):
    """If the config walk ever missed a Lambda, tf_keras itself refuses it in an HDF5 file."""
    path = tmp_path / "model.model"
    path.write_bytes(h5_bytes(build("lambda", marker)))
    monkeypatch.setattr(models, "stored_code", lambda config: set())
    with pytest.raises(ModelError, match="tf_keras cannot load .*lambda"):
        models.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["plain", "slicing"])
def test_files_without_stored_code_load_without_trust(tmp_path, marker, kind):
    path = tmp_path / "model.h5"
    path.write_bytes(h5_bytes(build(kind, marker), "compact"))
    assert models.load(path).output_shape == (None, 2)


@pytest.mark.parametrize("content, expected", [
    (b"not a model at all", "is not a tf_keras model file"),
    (b"", "is not a tf_keras model file"),
])
def test_unrecognised_content_is_refused_whatever_the_name(tmp_path, content, expected):
    path = tmp_path / "model.keras"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=expected):
        models.load(path)


def test_unreadable_config_is_refused_without_trust(tmp_path, marker):
    path = tmp_path / "model.h5"
    path.write_bytes(h5_bytes(build("lambda", marker)))
    with h5py.File(path, "r+") as handle:
        handle.attrs["model_config"] = '{"class_name": "Functional", "config": '  # cut short
    with pytest.raises(ModelError, match="its HDF5 model_config is not valid JSON.*cannot read this one"):
        models.load(path)
    with h5py.File(path, "r+") as handle:
        del handle.attrs["model_config"]
    with pytest.raises(ModelError, match="no model_config"):
        models.load(path)
    assert not marker.exists()


def test_keras_archive_under_another_name_is_explained(tmp_path, marker):
    path = tmp_path / "model.zip"
    path.write_bytes(keras_zip_bytes(build("plain", marker), tmp_path))
    with pytest.raises(ModelError, match="rename it"):
        models.load(path)


def test_folder_that_is_not_a_saved_model_is_explained(tmp_path):
    with pytest.raises(ModelError, match="not a SavedModel"):
        models.load(tmp_path)


# ---- property: nothing accepted without trust holds a Lambda ----------------

ENDINGS = ["h5", "hdf5", "keras", "model", "bin", "", "KERAS", "keras.bak"]
SPELLINGS = ["default", "compact", "indented", "escaped", "decoy"]


@pytest.fixture(scope="module")
def base_files(tmp_path_factory):
    """The models above as HDF5 and .keras bytes in every spelling, built once (about 3 s)."""
    folder = tmp_path_factory.mktemp("bases")
    marker = folder / "lambda_ran"
    files = {}
    for kind in ("plain", "slicing", *sorted(CODE_KINDS)):
        model = build(kind, marker)
        for spelling in SPELLINGS:
            files[kind, "hdf5", spelling] = h5_bytes(model, spelling)
            files[kind, "zip", spelling] = keras_zip_bytes(model, folder, spelling)
    if marker.exists():
        marker.unlink()
    return files, marker


@settings(max_examples=40, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kind=st.sampled_from(["plain", "slicing", *sorted(CODE_KINDS)]), form=st.sampled_from(["hdf5", "zip"]),
       spelling=st.sampled_from(SPELLINGS), ending=st.sampled_from(ENDINGS))
def test_no_file_accepted_without_trust_holds_stored_code(tmp_path, base_files, kind, form, spelling, ending):
    files, marker = base_files  # marker: the path baked into the stored Lambdas
    folder = tmp_path / f"{kind}-{form}-{spelling}-{ending or 'none'}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    path = folder / (f"model.{ending}" if ending else "model")
    path.write_bytes(files[kind, form, spelling])
    try:
        models.load(path)
        accepted = True
    except ModelError as error:
        assert "\n" not in str(error)
        accepted = False
    assert not (accepted and kind in CODE_KINDS), f"{kind} model accepted without trust as {path.name}"
    if kind not in CODE_KINDS and (form == "hdf5" or ending == "keras"):
        assert accepted, f"{kind} model refused as {path.name}"
    assert not marker.exists(), f"stored code ran loading {kind} as {path.name}"
