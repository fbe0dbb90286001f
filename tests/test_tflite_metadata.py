"""TFLite metadata written into real converted files, read back by edgecomp and by tflite-support itself."""

import json
import os
import subprocess
import textwrap

import numpy as np
import pytest

from edgecomp import runtime, tflite_metadata

# tflite-support (the official metadata library) cannot be installed beside TensorFlow 2.21 (protobuf < 4):
# .ci/run installs it in a virtual environment of its own and names that environment's python here.
SUPPORT_PYTHON = os.environ.get("EDGECOMP_TFLITE_SUPPORT_PYTHON")

INFO = tflite_metadata.Description(
    name="tiny", description="A 3-class test model", version="2.1", author="edgecomp tests",
    labels=("cat", "dog", "bird"), mean=[0.0], std=[255.0], image="grayscale",
    input_description="gray pixels divided by 255", output_description="logits")


@pytest.mark.parametrize("quantization", ["float32", "int8"])
def test_a_file_with_metadata_runs_exactly_as_without_it(converted, tiny_dataset, quantization):
    content = converted(quantization)
    tagged = tflite_metadata.attach(content, INFO)
    x = tiny_dataset.x_test[:20]
    assert np.array_equal(runtime.predict(tagged, x), runtime.predict(content, x))
    assert tflite_metadata.read(content) is None


def test_metadata_reads_back_with_labels_normalization_and_description(converted):
    found = tflite_metadata.read(tflite_metadata.attach(converted("int8"), INFO))
    assert found["labels"] == ["cat", "dog", "bird"] and found["files"] == ["labels.txt"]
    assert found["input"] == {"name": "image", "image": "grayscale", "mean": [0.0], "std": [255.0]}
    assert found["output"] == {"name": "probability", "label_file": "labels.txt"}
    assert (found["name"], found["version"], found["author"]) == ("tiny", "2.1", "edgecomp tests")
    assert found["min_parser_version"] == "1.0.0"


def test_attaching_again_replaces_the_metadata_instead_of_piling_it_up(converted):
    once = tflite_metadata.attach(converted("float32"), INFO)
    assert tflite_metadata.attach(once, INFO) == once
    relabelled = tflite_metadata.attach(once, tflite_metadata.Description(name="tiny", description="d",
                                                                          labels=("a", "b", "c")))
    found = tflite_metadata.read(relabelled)
    assert found["labels"] == ["a", "b", "c"] and found["input"]["mean"] is None and found["input"]["image"] is None
    assert len(relabelled) < len(once) + 64


def test_bad_normalization_is_refused_with_the_reason(converted):
    with pytest.raises(ValueError, match="both mean and std"):
        tflite_metadata.attach(converted("float32"), tflite_metadata.Description(name="t", description="d",
                                                                                 mean=[0.0]))
    with pytest.raises(ValueError, match="zero"):
        tflite_metadata.attach(converted("float32"), tflite_metadata.Description(name="t", description="d",
                                                                                 mean=[0.0], std=[0.0]))


@pytest.mark.skipif(not SUPPORT_PYTHON, reason="EDGECOMP_TFLITE_SUPPORT_PYTHON names no python with tflite-support "
                                               "(.ci/run makes one: pip install tflite-support==0.4.4)")
def test_tflite_support_reads_and_accepts_the_metadata(converted, tmp_path):
    """The official library parses the file, finds the label file, and its populator accepts the buffer."""
    path = tmp_path / "model.tflite"
    path.write_bytes(tflite_metadata.attach(converted("int8"), INFO))
    script = textwrap.dedent("""
        import json, sys
        from tflite_support import metadata
        content = open(sys.argv[1], "rb").read()
        shown = metadata.MetadataDisplayer.with_model_buffer(content)
        # The populator validates the buffer against the model (tensor counts, label file names, parser version).
        plain = open(sys.argv[2], "rb").read()
        populator = metadata.MetadataPopulator.with_model_buffer(plain)
        populator.load_metadata_buffer(metadata.get_metadata_buffer(content))
        populator.load_associated_file_buffers({"labels.txt": shown.get_associated_file_buffer("labels.txt")})
        populator.populate()
        again = metadata.MetadataDisplayer.with_model_buffer(populator.get_model_buffer())
        print(json.dumps({"metadata": json.loads(shown.get_metadata_json()),
                          "files": shown.get_packed_associated_file_list(),
                          "labels": shown.get_associated_file_buffer("labels.txt").decode(),
                          "populated_equal": again.get_metadata_json() == shown.get_metadata_json()}))
    """)
    plain = tmp_path / "plain.tflite"
    plain.write_bytes(converted("int8"))
    done = subprocess.run([SUPPORT_PYTHON, "-c", script, str(path), str(plain)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    assert shown["files"] == ["labels.txt"] and shown["labels"] == "cat\ndog\nbird\n"
    assert shown["populated_equal"]
    metadata = shown["metadata"]
    assert (metadata["name"], metadata["version"], metadata["min_parser_version"]) == ("tiny", "2.1", "1.0.0")
    tensor = metadata["subgraph_metadata"][0]["input_tensor_metadata"][0]
    assert tensor["content"]["content_properties"] == {"color_space": "GRAYSCALE"}
    assert tensor["process_units"][0]["options"] == {"mean": [0.0], "std": [255.0]}
    output = metadata["subgraph_metadata"][0]["output_tensor_metadata"][0]
    assert output["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
