"""The gpu target: the delegate's rules checked on the file, the model analyzer's report parsed, the pipeline."""

import json
from pathlib import Path

import pytest

from edgecomp import config
from edgecomp.errors import ConfigError
from edgecomp.targets import gpu

ANALYZER = Path(__file__).resolve().parent / "data" / "gpu_analyzer"
STATIC_RULES = ["loads", "supported_ops", "tensor_rank", "static_shapes", "data_types", "delegation", "io_type",
                "quantization"]


def _failed(compatibility):
    return {rule["rule"]: rule["detail"] for rule in compatibility["details"]["rules"] if not rule["ok"]}


def _float16(model):
    from edgecomp.targets import convert

    return convert.convert(model, "float16")


def _argmax_net():
    """conv → cumsum → sin → argmax → cast → dense: CUMSUM and SIN are GPU ops, ARG_MAX is not."""
    from edgecomp._keras import keras, tf

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras.layers.Lambda(lambda v: tf.math.cumsum(v, axis=1))(x)
    x = keras.layers.Lambda(tf.math.sin)(x)
    x = keras.layers.Lambda(lambda v: tf.cast(tf.math.argmax(v, axis=-1), tf.float32))(x)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def test_float16_conv_model_passes_every_rule_and_says_checked_statically(converted, tiny_dataset):
    compatibility = gpu.verify(converted("float16"), "float16", sample=tiny_dataset.x_test[:2])
    details = compatibility["details"]
    assert compatibility["ok"], _failed(compatibility)
    assert [rule["rule"] for rule in details["rules"]] == STATIC_RULES + ["analyzer"]
    assert details["analyzer"]["says_compatible"] is True and details["unsupported"] == []
    assert "77042" in details["rules"][-1]["detail"]
    # No GPU here: the accelerator loads but finds no adapter, so the verdict is static.
    assert details["delegate"]["ran"] is False and details["checked"] == "statically"
    assert any(note.startswith("checked statically") for note in details["notes"])


def test_argmax_fails_under_strict_naming_the_op_and_reason_while_cumsum_and_sin_pass():
    compatibility = gpu.verify(_float16(_argmax_net()), "float16", strict=True)
    failed = _failed(compatibility)
    assert set(failed) == {"supported_ops", "data_types", "delegation"}
    assert "strict: true asks for the whole graph" in failed["delegation"]
    assert "ARG_MAX is not supported by the GPU delegate" in failed["supported_ops"]
    assert "int64" in failed["data_types"]
    reasons = {(u["op"], u["rule"]): u["reason"] for u in compatibility["details"]["unsupported"]}
    assert reasons[("CAST", "supported_ops")] == "CAST: not a supported CAST case: int64 to float32"
    assert {u["source"] for u in compatibility["details"]["unsupported"]} == {"static"}
    on_gpu = {op["op"]: op["on_gpu"] for op in compatibility["details"]["ops"]}
    assert on_gpu["CUMSUM"] and on_gpu["SIN"] and on_gpu["CONV_2D"] and not on_gpu["ARG_MAX"]
    # The analyzer of this TensorFlow misses it (tensorflow/tensorflow#77042); its rule says so.
    analyzer = next(rule for rule in compatibility["details"]["rules"] if rule["rule"] == "analyzer")
    assert analyzer["ok"] and "missed" in analyzer["detail"]


def test_a_partly_supported_graph_passes_with_warnings_and_the_delegates_figures_by_default():
    """conv, cumsum, sin on the GPU; argmax, cast on the CPU; then reshape and dense on the GPU again."""
    compatibility = gpu.verify(_float16(_argmax_net()), "float16", analyzer=False)
    details = compatibility["details"]
    assert compatibility["ok"], _failed(compatibility)
    warned = {rule["rule"] for rule in details["rules"] if rule.get("warning")}
    assert warned == {"supported_ops", "data_types", "delegation"}
    found = details["delegation"]
    supported = sum(op["on_gpu"] for op in details["ops"])
    assert found["ops_supported"] == supported < found["ops_total"] == len(details["ops"])
    assert found["partitions"] == 2 and found["cpu_subsets"] == 1
    assert found["ops_on_gpu"] < supported                      # the delegate takes one partition by default
    conv, dense = 8 * 8 * 8 * (3 * 3 * 3), 64 * 3
    assert found["macs_total"] == conv + dense and found["macs_on_gpu"] == conv   # conv, cumsum, sin: the largest
    rule = next(rule for rule in details["rules"] if rule["rule"] == "delegation")
    assert f"{found['ops_on_gpu']} of {found['ops_total']} ops" in rule["detail"] and "2 partition(s)" in rule["detail"]


def test_partitions_follow_the_delegates_greedy_partitioner():
    from edgecomp.graph import Operator

    def op(index, inputs, outputs):
        return Operator(index=index, name="ADD", inputs=inputs, outputs=outputs, options=None)

    # two branches from the input: a (gpu) → c (cpu); b (gpu) → d (gpu); e (gpu) joins c and d
    graph = [op(0, (0,), (1,)), op(1, (1,), (2,)), op(2, (0,), (3,)), op(3, (3,), (4,)), op(4, (2, 4), (5,))]
    on_gpu = [True, False, True, True, True]
    # greedy: every ready GPU op first (a, b, d), then c on the CPU, then e
    assert gpu.node_subsets(graph, on_gpu) == [(True, [0, 2, 3]), (False, [1]), (True, [4])]
    assert gpu.node_subsets(graph, [True] * 5) == [(True, [0, 1, 2, 3, 4])]


def test_five_dimensional_tensor_fails_tensor_rank():
    from test_edgetpu import _small_net

    failed = _failed(gpu.verify(_float16(_small_net(reshape_5d=True)), "float16", analyzer=False, strict=True))
    assert "5-D" in failed["tensor_rank"] and "at most 4-D" in failed["tensor_rank"]


def test_int8_passes_with_the_dequantize_note(converted):
    compatibility = gpu.verify(converted("int8"), "int8", analyzer=False)
    assert compatibility["ok"], _failed(compatibility)
    assert any("dequantizes" in note for note in compatibility["details"]["notes"])


def test_float32_file_claimed_as_float16_fails_quantization(converted):
    assert "quantization" in _failed(gpu.verify(converted("float32"), "float16", analyzer=False))


def test_not_a_model_fails_loads():
    compatibility = gpu.verify(b"not a tflite file", "float16")
    assert not compatibility["ok"] and list(_failed(compatibility)) == ["loads"]


def test_parser_reads_the_recorded_compatible_report():
    parsed = gpu.parse_analyzer((ANALYZER / "tf2.21_float16_conv_compatible.txt").read_text())
    assert parsed == {"says_compatible": True, "runtime_version": "2.21.0", "issues": [], "nodes": [],
                      "subgraphs": 1}


def test_parser_reads_the_recorded_report_that_misses_argmax():
    text = (ANALYZER / "tf2.21_float16_argmax_says_compatible.txt").read_text()
    assert "ARG_MAX(" in text
    assert gpu.parse_analyzer(text)["says_compatible"] is True


def test_parser_attaches_each_warning_to_its_op_and_reads_the_summary():
    parsed = gpu.parse_analyzer((ANALYZER / "constructed_incompatible.txt").read_text())
    assert parsed["says_compatible"] is False and parsed["runtime_version"] == "2.13.0"
    assert parsed["nodes"] == [1, 2, 3]
    assert parsed["issues"] == [
        {"index": 1, "op": "ARG_MAX", "reason": "Not supported op ARG_MAX"},
        {"index": 2, "op": "CAST", "reason": "Not supported Cast case. Input type: INT64 and output type: FLOAT32"},
        {"index": 3, "op": "EXPAND_DIMS", "reason": "Not supported op EXPAND_DIMS"},
    ]


def test_analyzer_warning_fails_the_analyzer_rule(monkeypatch, converted):
    text = (ANALYZER / "constructed_incompatible.txt").read_text()
    monkeypatch.setattr(gpu, "analyzer_text", lambda content: text)
    compatibility = gpu.verify(converted("float16"), "float16")
    assert list(_failed(compatibility)) == ["analyzer"]
    sources = {u["source"] for u in compatibility["details"]["unsupported"]}
    assert sources == {"analyzer"}


def test_config_takes_gpu_float16_by_default_and_refuses_io_that_does_not_fit():
    params = config.stage_params(config.from_dict({"targets": [{"gpu": {}}]}).targets[0])
    assert (params.quantization, params.io) == ("float16", "float32")
    config.from_dict({"targets": [{"gpu": {"quantization": "int8", "io": "uint8"}}]})
    with pytest.raises(ConfigError, match=r"targets\[0\]\.gpu.*io 'int8' does not fit quantization 'float16'"):
        config.from_dict({"targets": [{"gpu": {"io": "int8"}}]})


def test_profile_lists_gpu_with_float16_first():
    from edgecomp.targets.profiles import PROFILES

    assert PROFILES["gpu"].quantizations[0] == "float16"
    assert PROFILES["gpu"].allowed_io("float16") == ("float32",)


def test_pipeline_with_a_gpu_target_reports_compatibility_and_accuracy_of_the_file(tmp_path):
    from conftest import tflite_accuracy
    from edgecomp import data, pipeline

    cfg = config.from_dict({
        "name": "gpu", "output_dir": str(tmp_path),
        "data": {"source": "synthetic", "image_size": [8, 8], "num_classes": 3, "samples": 200,
                 "calibration_samples": 20},
        "model": {"zoo": "digits_cnn", "args": {"width": 0.5}},
        "train": {"epochs": 1, "stop_if_not_learned": False},
        "targets": [{"gpu": {}}],
        "benchmark": {"runs": 2, "warmup": 0},
    })
    pipeline.run(cfg)
    written = json.loads((cfg.run_dir / "report.json").read_text())
    target = written["targets"][0]
    assert target["target"] == "gpu" and target["quantization"] == "float16"
    assert target["compatibility"]["ok"], target["compatibility"]["details"]["rules"]
    assert target["compatibility"]["details"]["checked"] == "statically"
    assert "on the CPU" in target["metrics"]["runtime"]
    assert target["benchmarks"] == []
    dataset = data.load(cfg.data, cfg.seed)
    measured = tflite_accuracy(cfg.run_dir / "gpu" / "model.tflite", dataset)
    assert target["metrics"]["accuracy"] == pytest.approx(measured, abs=1e-9)
    assert "gpu" in (cfg.run_dir / "report.md").read_text()


def _op_issues(name, shapes, dtypes, constant, options=None, outputs=1):
    """The delegate's verdict on one op built from its tensors' shapes and types."""
    import types

    import numpy as np

    from edgecomp.graph import Operator, Tensor

    tensors = {i: Tensor(index=i, name=f"t{i}", shape=shape, signature=shape, dtype=dtype, quantized=False,
                         value=np.zeros(shape) if i in constant else None)
               for i, (shape, dtype) in enumerate(zip(shapes, dtypes))}
    out = len(tensors)
    for k in range(outputs):
        tensors[out + k] = Tensor(index=out + k, name="out", shape=(1, 4), signature=(1, 4), dtype="FLOAT32",
                                  quantized=False, value=None)
    operator = Operator(index=0, name=name, inputs=tuple(range(out)), outputs=tuple(range(out, out + outputs)),
                        options=types.SimpleNamespace(**(options or {})))
    return [reason for rule, reason in gpu.op_issues(operator, tensors, set(constant)) if rule == "supported_ops"]


def test_one_hot_follows_the_delegates_rules():
    scalar = ()
    good = _op_issues("ONE_HOT", [(1, 4), (), scalar, scalar], ["INT32", "INT32", "FLOAT32", "FLOAT32"], {1, 2, 3},
                      {"axis": -1})
    assert good == []
    runtime_on_value = _op_issues("ONE_HOT", [(1, 4), (), scalar, scalar], ["INT32", "INT32", "FLOAT32", "FLOAT32"],
                                  {1, 3}, {"axis": -1})
    assert runtime_on_value and "constant scalar float32 on/off" in runtime_on_value[0]
    float_indices = _op_issues("ONE_HOT", [(1, 4), (), scalar, scalar], ["FLOAT32", "INT32", "FLOAT32", "FLOAT32"],
                               {1, 2, 3}, {"axis": -1})
    assert float_indices


def test_lstm_needs_its_input_count_and_basic_kernels_their_layout():
    full = _op_issues("LSTM", [(1, 4)] * 24, ["FLOAT32"] * 24, set(range(1, 24)), {"fusedActivationFunction": 4})
    assert full == []
    wrong_count = _op_issues("LSTM", [(1, 4)] * 5, ["FLOAT32"] * 5, {1, 2}, {"fusedActivationFunction": 4})
    assert "20 or 24 input tensors" in wrong_count[0]
    basic = _op_issues("LSTM", [(1, 4)] * 5, ["FLOAT32"] * 5, {3, 4},
                       {"fusedActivationFunction": 4, "kernelType": 1, "cellClip": 0.0, "projClip": 0.0}, outputs=4)
    assert basic == []
    clipped = _op_issues("LSTM", [(1, 4)] * 5, ["FLOAT32"] * 5, {3, 4},
                         {"fusedActivationFunction": 4, "kernelType": 1, "cellClip": 3.0, "projClip": 0.0}, outputs=4)
    assert "cell_clip" in clipped[0]


def squeeze_excite_net(input_shape, num_classes):
    """A squeeze-excite gate as keras.applications writes it (GlobalAveragePooling2D → Reshape → 1×1 convs)."""
    from edgecomp._keras import keras

    layers = keras.layers
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    gate = layers.Reshape((1, 1, 8))(layers.GlobalAveragePooling2D()(x))
    gate = layers.Conv2D(8, 1, activation="sigmoid")(gate)
    x = layers.GlobalAveragePooling2D()(layers.Multiply()([x, gate]))
    return keras.Model(inputs, layers.Dense(num_classes)(x))


def test_gpu_file_has_batch_one_so_a_squeeze_excite_reshape_stays_on_the_gpu(tmp_path):
    """With Keras' dynamic batch the Reshape becomes SHAPE/STRIDED_SLICE/PACK on int32 tensors, which the delegate
    leaves on the CPU (2 partitions, 6 of 15 ops on the GPU); converted with batch 1 the whole graph is delegated."""
    from edgecomp import pipeline

    cfg = config.from_dict({
        "name": "gpu_se", "output_dir": str(tmp_path),
        "data": {"source": "synthetic", "image_size": [8, 8], "num_classes": 3, "samples": 120,
                 "calibration_samples": 20},
        "model": {"builder": "test_gpu_target:squeeze_excite_net"},
        "train": {"epochs": 1, "stop_if_not_learned": False},
        "targets": [{"gpu": {"strict": True}}],
        "benchmark": {"runs": 2, "warmup": 0},
    })
    pipeline.run(cfg)
    target = json.loads((cfg.run_dir / "report.json").read_text())["targets"][0]
    delegation = target["compatibility"]["details"]["delegation"]
    assert target["compatibility"]["ok"], _failed(target["compatibility"])
    assert delegation["partitions"] == 1 and delegation["ops_supported"] == delegation["ops_total"]
    assert target["io"]["inputs"][0]["shape"][0] == 1
