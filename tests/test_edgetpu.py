"""The edgetpu target: Coral's model requirements checked on the file, the chain break, MACs, the compiler's log."""

import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecomp import config
from edgecomp.errors import ConfigError
from edgecomp.targets import edgetpu

LOGS = Path(__file__).resolve().parent / "data" / "edgetpu_compiler"
RULES = ["loads", "io_type", "batch_one", "static_shapes", "quantized_8bit", "tensor_rank", "supported_ops",
         "maps_fully"]


def _int8(model, io="int8", static_batch=True, samples=8):
    from edgecomp.targets import convert

    shape = tuple(model.inputs[0].shape[1:])
    calibration = np.random.default_rng(0).random((samples, *shape)).astype(np.float32)
    return convert.convert(model, "int8", io, calibration, static_batch=static_batch)


def _small_net(activation="relu6", dilation=(1, 1), batch_size=None, reshape_5d=False, shape=(8, 8, 3)):
    """conv → activation → conv → global average pool → dense, on ``shape`` images."""
    from edgecomp._keras import keras, tf

    inputs = keras.Input(shape, batch_size=batch_size)
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    if activation == "hard_swish":  # the converter fuses x * relu6(x + 3) / 6 into HARD_SWISH
        x = keras.layers.Lambda(lambda v: v * tf.nn.relu6(v + 3.0) / 6.0)(x)
    else:
        x = keras.layers.ReLU(6.0)(x)
    if reshape_5d:
        x = keras.layers.Reshape((2, 4, 8, 8))(x)  # [1, 2, 4, 8, 8]: 4 dimensions > 1
        x = keras.layers.Lambda(lambda v: tf.reduce_max(v, axis=1))(x)  # [1, 4, 8, 8], an op on the 5-D tensor
        x = keras.layers.Reshape(shape[:2] + (4,))(x)
    x = keras.layers.Conv2D(8, 3, padding="same", dilation_rate=dilation)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3)(x)
    return keras.Model(inputs, outputs)


def _failed(compatibility):
    return {rule["rule"]: rule["detail"] for rule in compatibility["details"]["rules"] if not rule["ok"]}


@pytest.fixture(scope="module")
def tiny_int8(tiny_model):
    return _int8(tiny_model)


def test_full_integer_batch_one_model_passes_every_rule(tiny_int8):
    compatibility = edgetpu.verify(tiny_int8, io="int8")
    assert [rule["rule"] for rule in compatibility["details"]["rules"]] == RULES
    assert compatibility["ok"], _failed(compatibility)
    mapping = compatibility["details"]["mapping"]
    assert mapping["first_unmapped"] is None and mapping["ops_on_cpu"] == 0
    assert mapping["mac_share_on_tpu"] == 1.0 and mapping["macs_total"] > 0


def test_float_model_fails_quantized_8bit_and_maps_nothing(converted):
    compatibility = edgetpu.verify(converted("float32"), io="int8")
    failed = _failed(compatibility)
    assert "tensor" in failed["quantized_8bit"] and "float32" in failed["quantized_8bit"]
    assert "inputs/outputs are float32, expected int8" in failed["io_type"]
    assert compatibility["details"]["mapping"]["ops_on_tpu"] == 0


def test_float_op_left_in_an_int8_model_breaks_the_chain_there():
    """An op with no int8 kernel (SIN) stays float between DEQUANTIZE and QUANTIZE."""
    from edgecomp._keras import keras, tf

    inputs = keras.Input((8, 8, 3), batch_size=1)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Lambda(tf.math.sin)(x)
    x = keras.layers.Conv2D(8, 3, padding="same")(x)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, outputs))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([np.random.default_rng(i).random((1, 8, 8, 3), np.float32)]
                                                 for i in range(8))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    compatibility = edgetpu.verify(bytes(converter.convert()), io="int8")
    ops = [op["op"] for op in compatibility["details"]["ops"]]
    first = compatibility["details"]["mapping"]["first_unmapped"]
    assert "SIN" in ops and first["op"] == "DEQUANTIZE" and first["index"] == ops.index("DEQUANTIZE")
    assert "float section" in first["reasons"][0]
    assert "float32" in _failed(compatibility)["quantized_8bit"]


def test_uint8_io_passes_with_io_uint8_and_fails_io_type_otherwise(tiny_model):
    content = _int8(tiny_model, io="uint8")
    assert edgetpu.verify(content, io="uint8")["ok"]
    assert set(_failed(edgetpu.verify(content, io="int8"))) == {"io_type"}


def test_dynamic_batch_fails_static_shapes_and_batch_one(tiny_model):
    compatibility = edgetpu.verify(_int8(tiny_model, static_batch=False), io="int8")
    failed = _failed(compatibility)
    assert "dynamic shape [-1," in failed["static_shapes"]
    assert "input batch size -1" in failed["batch_one"]
    assert compatibility["details"]["mapping"]["first_unmapped"]["index"] == 0


def test_batch_of_two_fails_batch_one():
    failed = _failed(edgetpu.verify(_int8(_small_net(batch_size=2), static_batch=False), io="int8"))
    assert failed["batch_one"].startswith("input batch size 2")
    assert "static_shapes" not in failed


def test_five_dimensional_tensor_fails_tensor_rank_and_breaks_the_chain():
    compatibility = edgetpu.verify(_int8(_small_net(reshape_5d=True)), io="int8")
    failed = _failed(compatibility)
    assert "[1, 2, 4, 8, 8]" in failed["tensor_rank"]
    first = compatibility["details"]["mapping"]["first_unmapped"]
    assert first["op"] == "RESHAPE" and "3 innermost" in " ".join(first["reasons"])


def test_custom_op_fails_supported_ops(tiny_int8):
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tiny_int8))
    last = model.subgraphs[0].operators[-1]
    code = model.operatorCodes[last.opcodeIndex]
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = "MyVendorOp"
    compatibility = edgetpu.verify(bytes(flatbuffer_utils.convert_object_to_bytearray(model)), io="int8")
    failed = _failed(compatibility)
    assert "CUSTOM(MyVendorOp) is not supported" in failed["supported_ops"]
    assert "MyVendorOp" in failed["loads"]   # LiteRT itself has no kernel for it either
    assert compatibility["details"]["mapping"]["first_unmapped"]["op"] == "CUSTOM(MyVendorOp)"


def test_hard_swish_breaks_the_chain_and_the_report_names_it_with_the_mac_share():
    compatibility = edgetpu.verify(_int8(_small_net("hard_swish")), io="int8")
    mapping = compatibility["details"]["mapping"]
    assert [op["op"] for op in compatibility["details"]["ops"]][:2] == ["CONV_2D", "HARD_SWISH"]
    assert mapping["first_unmapped"]["op"] == "HARD_SWISH" and mapping["first_unmapped"]["index"] == 1
    assert mapping["ops_on_tpu"] == 1 and mapping["mapped_ops"] == ["CONV_2D"]
    # MACs from shapes: conv 8x8x8 outputs x 3x3x3, conv 8x8x8 x 3x3x8, dense 3 x 8.
    first, second, dense = 512 * 27, 512 * 72, 3 * 8
    assert mapping["macs_total"] == first + second + dense
    assert mapping["mac_share_on_tpu"] == pytest.approx(first / (first + second + dense))
    detail = _failed(compatibility)["maps_fully"]
    assert "breaks at op #1 HARD_SWISH" in detail and "27.3% of 50,712 MACs" in detail
    assert "use ReLU6" in detail


def test_relu6_variant_of_the_same_net_maps_fully():
    compatibility = edgetpu.verify(_int8(_small_net("relu6")), io="int8")
    assert compatibility["ok"], _failed(compatibility)


def test_unequal_dilation_breaks_the_documented_conv_limit():
    compatibility = edgetpu.verify(_int8(_small_net(dilation=(2, 1))), io="int8")
    assert "dilation 2x1 differs in y and x" in _failed(compatibility)["supported_ops"]
    assert compatibility["details"]["mapping"]["first_unmapped"]["op"] == "CONV_2D"


@pytest.mark.parametrize("name, expected", [
    ("v16_all_mapped_issue572.txt", {"version": "16.0.384591198", "compiled": True, "on_chip_bytes": 619008,
                                     "on_chip_remaining_bytes": 523776, "off_chip_bytes": round(3.45 * 1024 ** 2),
                                     "subgraphs": 1, "total_ops": 50, "ops_on_tpu": 50, "ops_on_cpu": 0}),
    ("v14_partial_issue173.txt", {"version": "14.1.317412892", "compiled": True, "on_chip_bytes": 60 * 1024,
                                  "off_chip_bytes": 0, "total_ops": 24, "ops_on_tpu": 6, "ops_on_cpu": 18}),
    ("v14_operation_log_tiny_yolo.log", {"version": "14.1.317412892", "ops_on_tpu": 19, "ops_on_cpu": 6}),
    ("v2_all_mapped_tiny_yolo.txt", {"version": "2.0.267685300", "ops_on_tpu": 25, "ops_on_cpu": 0}),
    ("v16_failed_large_activations_issue512.txt", {"compiled": False, "error": (
        "Compilation failed: Compilation failed due to large activation tensors in model.")}),
    ("v14_internal_error_issue173.txt", {"compiled": False, "error": "Internal compiler error. Aborting!"}),
])
def test_compiler_log_parser_reads_recorded_logs(name, expected):
    text = (LOGS / name).read_text()
    assert text.startswith("# source: https://github.com/")
    parsed = edgetpu.parse_compiler_log(text)
    assert {key: parsed[key] for key in expected} == expected


def test_compiler_log_parser_reads_the_operator_table():
    rows = edgetpu.parse_compiler_log((LOGS / "v14_operation_log_tiny_yolo.log").read_text())["operators"]
    assert len(rows) == 8
    assert rows[2] == {"op": "RESIZE_NEAREST_NEIGHBOR", "count": 1, "status": "Operation version not supported",
                       "mapped": False}
    assert sum(row["count"] for row in rows if row["op"] == "CONV_2D" and row["mapped"]) == 11


def _params(**values):
    return config.EdgeTpuTargetConfig(**values)


def test_absent_compiler_is_reported_not_failed(tiny_int8, tiny_dataset, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(tiny_int8)
    compatibility, metrics, skipped = edgetpu.judge(tiny_int8, _params(compiler="edgetpu_compiler_not_here"), path,
                                                  tiny_dataset.x_test[:20], tiny_dataset.y_test[:20])
    assert compatibility["ok"]
    assert compatibility["details"]["compiler"]["available"] is False
    assert compatibility["details"]["checked"] == "statically (edgetpu_compiler not installed)"
    assert any(item["layer"] == "edgetpu_compiler" and "not on PATH" in item["reason"] for item in skipped)
    assert metrics["samples"] == 20 and 0.0 <= metrics["accuracy"] <= 1.0


def _fake_compiler(folder: Path, body: str) -> Path:
    """A stand-in ``edgetpu_compiler``: a Python script that records its arguments."""
    script = folder / "fake_edgetpu_compiler"
    script.write_text(f"#!{sys.executable}\nimport sys, time, pathlib\n"
                      f"pathlib.Path({str(folder / 'argv.txt')!r}).write_text(' '.join(sys.argv[1:]))\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_compiler_on_path_is_run_and_its_model_and_log_are_kept(tiny_int8, tmp_path):
    path = tmp_path / "out" / "model.tflite"
    path.parent.mkdir()
    path.write_bytes(tiny_int8)
    recorded = (LOGS / "v16_all_mapped_issue572.txt").read_text()
    compiler = _fake_compiler(tmp_path, (
        "out = pathlib.Path(sys.argv[sys.argv.index('--out_dir') + 1])\n"
        "(out / 'model_edgetpu.tflite').write_bytes(b'compiled')\n"
        "(out / 'model_edgetpu.log').write_text('Operator Count Status\\n')\n"
        f"print({recorded!r})"))
    result = edgetpu.compile_model(path, str(compiler), timeout_s=60)
    assert (tmp_path / "argv.txt").read_text() == f"--out_dir {path.parent} --show_operations {path}"
    assert result["available"] and result["returncode"] == 0 and result["error"] is None
    assert result["model"] == "model_edgetpu.tflite" and result["log"] == "model_edgetpu.log"
    assert result["ops_on_tpu"] == 50 and result["on_chip_bytes"] == 619008
    assert (path.parent / "edgetpu_compiler.txt").read_text().startswith("# source:")


def test_a_compiler_that_exits_0_but_says_nothing_fails_compiles(tiny_int8, tiny_dataset, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(tiny_int8)
    silent = _fake_compiler(tmp_path, "print('Edge TPU Compiler version 16.0.384591198')")
    compatibility, _, _ = edgetpu.judge(tiny_int8, _params(compiler=str(silent)), path,
                                      tiny_dataset.x_test[:5], tiny_dataset.y_test[:5])
    assert not compatibility["ok"]
    assert "exited 0 but wrote no compiled model" in _failed(compatibility)["compiles"]
    assert compatibility["details"]["checked"].endswith("which failed")


def test_compiler_failure_and_timeout_are_recorded_not_raised(tiny_int8, tiny_dataset, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(tiny_int8)
    failing = _fake_compiler(tmp_path, f"print({(LOGS / 'v14_internal_error_issue173.txt').read_text()!r})\n"
                                       "sys.exit(1)")
    compatibility, _, _ = edgetpu.judge(tiny_int8, _params(compiler=str(failing)), path,
                                      tiny_dataset.x_test[:5], tiny_dataset.y_test[:5])
    assert not compatibility["ok"]
    assert _failed(compatibility) == {"compiles": "Internal compiler error. Aborting!"}
    slow = _fake_compiler(tmp_path, "time.sleep(30)")
    result = edgetpu.compile_model(path, str(slow), timeout_s=0.5)
    assert result["compiled"] is False and "did not finish in 0 s" in result["error"]


@pytest.mark.parametrize("name, shape, args", [
    ("ds_cnn", (16, 10, 1), {"filters": 8, "blocks": 2}),
    ("resnet8", (16, 16, 3), {"filters": 4}),
    ("mobilenet_v2", (32, 32, 3), {"alpha": 0.35}),
])
def test_zoo_models_built_for_the_edge_tpu_map_fully(name, shape, args):
    from edgecomp import zoo

    compatibility = edgetpu.verify(_int8(zoo.build(name, shape, 4, args), samples=4), io="int8")
    assert compatibility["ok"], _failed(compatibility)
    assert compatibility["details"]["mapping"]["mac_share_on_tpu"] == 1.0


def test_config_takes_edgetpu_with_8_bit_io_only():
    cfg = config.from_dict({"targets": [{"edgetpu": {"io": "uint8", "compiler_timeout_s": 60}}]})
    params = config.stage_params(cfg.targets[0])
    assert (params.quantization, params.io, params.compiler) == ("int8", "uint8", "edgetpu_compiler")
    with pytest.raises(ConfigError, match=r"targets\[0\]\.edgetpu\.io"):
        config.from_dict({"targets": [{"edgetpu": {"io": "float32"}}]})


def test_profile_lists_edgetpu():
    from edgecomp.targets.profiles import PROFILES

    assert PROFILES["edgetpu"].allowed_io("int8") == ("int8", "uint8")
    assert os.path.basename(edgetpu.COMPILER) == "edgetpu_compiler"
