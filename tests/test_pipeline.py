"""End to end: a tiny config runs, and the report agrees with the files on disk."""

import gzip
import json
import logging
import os

import pytest

from conftest import tflite_accuracy
from edgecomp import config, data, pipeline


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = config.from_dict({
        "name": "tiny",
        "output_dir": str(out),
        "data": {"source": "digits", "calibration_samples": 50},
        "model": {"zoo": "digits_cnn", "args": {"width": 0.5}},
        "train": {"epochs": 1, "stop_if_not_learned": False},
        "targets": [{"cpu": {"quantization": "int8"}}, {"micro": {}}, {"edgetpu": {}}],
        "benchmark": {"runs": 10, "warmup": 1},
    })
    report = pipeline.run(cfg)
    return cfg, report


def test_run_writes_the_documented_layout(tiny_run):
    cfg, _ = tiny_run
    run_dir = cfg.run_dir
    for relative in ("config.yaml", "reference/model.tflite", "cpu/model.tflite", "report.json", "report.md",
                     "plots/accuracy_vs_size.png", "plots/latency.png", "checkpoints/00_baseline/model.h5",
                     "micro/model.tflite", "micro/model_data.cc", "micro/model_data.h", "micro/op_resolver.h",
                     "edgetpu/model.tflite"):
        assert (run_dir / relative).is_file(), relative
    assert config.load(run_dir / "config.yaml") == cfg
    for folder in ("reference", "cpu", "micro", "edgetpu"):   # output index -> class name, beside every file
        assert (run_dir / folder / "labels.txt").read_text().splitlines() == [str(i) for i in range(10)]


def test_files_carry_labels_and_normalization_as_tflite_metadata_but_micro_stays_bare(tiny_run):
    from edgecomp import tflite_metadata

    cfg, _ = tiny_run
    for folder in ("reference", "cpu", "edgetpu"):
        found = tflite_metadata.read((cfg.run_dir / folder / "model.tflite").read_bytes())
        assert found["labels"] == [str(i) for i in range(10)], folder
        assert found["input"] == {"name": "image", "image": "grayscale", "mean": [0.0], "std": [16.0]}
        assert found["name"] == "tiny" and f"for the {folder} target" in found["description"]
    assert tflite_metadata.read((cfg.run_dir / "micro" / "model.tflite").read_bytes()) is None


def test_report_json_has_the_contract_keys(tiny_run):
    cfg, _ = tiny_run
    saved = json.loads((cfg.run_dir / "report.json").read_text())
    assert {"name", "edgecomp_version", "seconds", "stages", "reference", "targets"} <= set(saved)
    assert saved["stages"][0]["stage"] == "baseline"
    assert {"stage", "params", "nonzero_params", "metrics", "seconds", "skipped"} <= set(saved["stages"][0])
    assert {"path", "size_bytes", "gzip_bytes", "metrics"} <= set(saved["reference"])
    target = saved["targets"][0]
    assert {"target", "quantization", "path", "size_bytes", "gzip_bytes", "metrics", "compatibility",
            "benchmarks"} <= set(target)
    assert saved["targets"][1]["compatibility"]["details"]["arena_bytes"] > 0
    bench = target["benchmarks"][0]
    assert {"device", "threads", "runs", "latency_ms", "init_ms", "first_ms", "peak_rss_mb", "delegate"} <= set(bench)
    assert set(bench["latency_ms"]) == {"mean", "std", "min", "p50", "p90", "p99", "max"}


def test_report_says_what_a_device_feeds_the_files_and_gets_back(tiny_run):
    cfg, _ = tiny_run
    saved = json.loads((cfg.run_dir / "report.json").read_text())["dataset"]
    digits = data.load(cfg.data, cfg.seed)
    assert saved["input"]["shape"] == [8, 8, 1] and "divided by 16" in saved["input"]["preprocessing"]
    assert saved["input"]["range"] == [float(digits.x_train.min()), float(digits.x_train.max())] == [0.0, 1.0]
    # digits_cnn ends in a Dense without activation: its files give logits, which is what the reference file holds.
    from edgecomp import runtime

    outputs = runtime.predict((cfg.run_dir / "reference" / "model.tflite").read_bytes(), digits.x_test[:20])
    assert saved["output"] == {"classes": 10, "kind": "logits", "labels": "labels.txt"}
    assert not ((outputs >= 0).all() and abs(outputs.sum(-1) - 1).max() < 1e-3)   # not probabilities
    text = (cfg.run_dir / "report.md").read_text()
    assert "Input: float32 (8, 8, 1), 8x8 gray pixels 0-16 divided by 16" in text
    assert "Output: 10 class logits (no softmax in the model" in text


def test_report_figures_match_the_files(tiny_run):
    cfg, report = tiny_run
    dataset = data.load(cfg.data, cfg.seed)
    for record in [report.reference, *report.targets]:
        path = cfg.run_dir / record.path
        content = path.read_bytes()
        assert record.size_bytes == os.path.getsize(path)
        assert record.gzip_bytes == len(gzip.compress(content, compresslevel=9, mtime=0))
        if record.target == "micro":  # measured in TFLM; LiteRT may differ by one quantization step
            assert record.metrics["litert_accuracy"] == pytest.approx(tflite_accuracy(path, dataset, reference=True),
                                                                    abs=1e-9)
        else:
            assert record.metrics["accuracy"] == pytest.approx(tflite_accuracy(path, dataset), abs=1e-9)
        assert record.compatibility["ok"], record.compatibility


def test_report_markdown_has_the_variant_table(tiny_run):
    cfg, report = tiny_run
    text = (cfg.run_dir / "report.md").read_text()
    assert "| variant | quantization | size | gzip | accuracy |" in text
    assert f"{report.targets[0].metrics['accuracy']:.4f}" in text
    ratio = report.targets[0].size_bytes / report.reference.size_bytes
    assert f"{ratio:.3f}×" in text
    assert "## Benchmarks\n\nLatencies in ms per invoke" in text   # the benchmark columns say their unit


def test_resume_reuses_the_baseline_and_gives_identical_files(tiny_run, caplog):
    cfg, report = tiny_run
    reference_before = (cfg.run_dir / "reference/model.tflite").read_bytes()
    int8_before = (cfg.run_dir / "cpu/model.tflite").read_bytes()
    micro_before = (cfg.run_dir / "micro/model_data.cc").read_bytes()
    with caplog.at_level(logging.INFO, logger="edgecomp"):
        again = pipeline.run(cfg, resume=True)
    assert "resume: reusing checkpoint 00_baseline" in caplog.text
    assert again.stages[0].metrics == report.stages[0].metrics
    assert (cfg.run_dir / "reference/model.tflite").read_bytes() == reference_before
    assert (cfg.run_dir / "cpu/model.tflite").read_bytes() == int8_before
    assert (cfg.run_dir / "micro/model_data.cc").read_bytes() == micro_before


def test_resume_after_an_upstream_change_trains_again(tiny_run, caplog):
    cfg, _ = tiny_run
    changed = cfg.model_copy(update={"train": cfg.train.model_copy(update={"learning_rate": 0.002})})
    with caplog.at_level(logging.INFO, logger="edgecomp"):
        pipeline.run(changed, resume=True)
    assert "from a different config or an earlier checkpoint made again; running it again" in caplog.text


def test_same_config_and_seed_give_the_same_metrics_and_files(tmp_path):
    raw = {"name": "twice", "data": {"source": "synthetic", "image_size": [6, 6], "num_classes": 3, "samples": 200,
                                     "calibration_samples": 20},
           "model": {"zoo": "digits_cnn", "args": {"width": 0.25}}, "train": {"epochs": 2, "stop_if_not_learned": False},
           "targets": [{"cpu": {"quantization": "int8"}}], "benchmark": {"runs": 2, "warmup": 0}}
    first = pipeline.run(config.from_dict({**raw, "output_dir": str(tmp_path / "a")}))
    second = pipeline.run(config.from_dict({**raw, "output_dir": str(tmp_path / "b")}))
    assert first.stages[0].metrics == second.stages[0].metrics
    assert [t.metrics for t in first.targets] == [t.metrics for t in second.targets]
    for relative in ("reference/model.tflite", "cpu/model.tflite"):
        assert (tmp_path / "a/twice" / relative).read_bytes() == (tmp_path / "b/twice" / relative).read_bytes()
    from edgecomp import tflite_metadata   # metadata off: the converter's bytes, measured the same

    bare = pipeline.run(config.from_dict({**raw, "output_dir": str(tmp_path / "c"), "metadata": {"write": False}}))
    assert [t.metrics for t in bare.targets] == [t.metrics for t in first.targets]
    assert tflite_metadata.read((tmp_path / "c/twice/cpu/model.tflite").read_bytes()) is None
    assert bare.targets[0].size_bytes < first.targets[0].size_bytes


def test_edgetpu_target_maps_fully_and_says_the_compiler_was_not_run(tiny_run):
    _, report = tiny_run
    record = next(r for r in report.targets if r.target == "edgetpu")
    assert record.compatibility["ok"], record.compatibility
    assert record.compatibility["details"]["mapping"]["mac_share_on_tpu"] == 1.0
    assert any(item["layer"] == "edgetpu_compiler" for item in record.skipped)
    assert not record.benchmarks
    markdown = (tiny_run[0].run_dir / "report.md").read_text()
    assert "- **edgetpu** (int8): pass, checked statically (edgetpu_compiler not installed)" in markdown


def test_a_softmax_head_is_reported_as_probabilities(tiny_dataset):
    from edgecomp._keras import keras

    inputs = keras.Input(tiny_dataset.input_shape)
    outputs = keras.layers.Dense(tiny_dataset.num_classes, activation="softmax")(keras.layers.Flatten()(inputs))
    described = pipeline.input_output(tiny_dataset, keras.Model(inputs, outputs))
    assert described["output"]["kind"] == "probabilities"
    assert described["input"]["preprocessing"].startswith("generated float32 values")


@pytest.mark.parametrize("target", ["cpu", "micro"])   # float input and output; int8 input and output
def test_the_device_example_classifies_image_files_as_the_run_measured(tiny_run, tmp_path, target):
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from conftest import ROOT
    from edgecomp import runtime

    cfg, _ = tiny_run
    digits = data.load(cfg.data, cfg.seed)
    paths, pixels = [], []
    for index, sample in enumerate(digits.x_test[:12]):   # digits as 8-bit PNG files, as a camera would give
        image = np.round(sample[..., 0] * 255).astype(np.uint8)
        paths.append(str(tmp_path / f"digit{index}.png"))
        Image.fromarray(image).save(paths[-1])
        pixels.append(image.astype(np.float32)[..., None] / 255)
    folder = cfg.run_dir / target
    labels = ["--labels", str(folder / "labels.txt")] if target == "micro" else []   # cpu: those packed in the file
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "raspberry_pi" / "classify.py"), "--model",
                           str(folder / "model.tflite"), *labels, "--top", "1",
                           *paths], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    printed = [line.split(": ")[1].split()[0] for line in done.stdout.splitlines()]
    expected = runtime.predict_one_by_one((folder / "model.tflite").read_bytes(), np.stack(pixels)).argmax(-1)
    assert printed == [str(label) for label in expected]
