"""The micro target: the real TFLM interpreter, arena search, board budgets, C sources."""

import pytest

from edgecomp import config
from edgecomp.targets import micro


@pytest.fixture(scope="module")
def int8_model(converted):
    return converted("int8", "int8")


def test_file_runs_in_tflm_and_agrees_with_litert(int8_model, tiny_dataset):
    compatibility, metrics = micro.verify(int8_model, config.MicroTargetConfig(), tiny_dataset.x_test,
                                          tiny_dataset.y_test)
    assert compatibility["ok"], compatibility["details"]["rules"]
    assert metrics["runtime"] == "tflm" and metrics["samples"] == len(tiny_dataset.y_test)
    assert abs(metrics["accuracy"] - metrics["litert_accuracy"]) <= 2 / len(tiny_dataset.y_test)


def test_litert_reference_kernels_give_tflm_outputs_bit_for_bit(int8_model, tiny_dataset):
    import numpy as np

    from edgecomp import runtime

    x = tiny_dataset.x_test[:30]
    tflm = micro.predict(int8_model, x, micro.find_arena(int8_model, x[0]))
    step = runtime.io_details(int8_model)["outputs"][0]["scale"]
    np.testing.assert_array_equal(np.rint(tflm / step), np.rint(runtime.predict(int8_model, x, reference=True) / step))


def test_arena_search_finds_the_smallest_working_arena(int8_model, tiny_dataset):
    arena = micro.find_arena(int8_model, tiny_dataset.x_test[0])
    assert arena % micro.ALIGNMENT == 0
    assert micro._runs(int8_model, arena, tiny_dataset.x_test[0])
    assert not micro._runs(int8_model, arena - micro.ALIGNMENT, tiny_dataset.x_test[0])


def test_a_model_with_an_op_tflm_lacks_fails_loads_naming_the_op_without_searching_arenas(tiny_dataset):
    from edgecomp import data
    from edgecomp._keras import keras
    from edgecomp.targets import convert

    keras.utils.set_random_seed(0)
    inputs = keras.Input(tiny_dataset.input_shape)
    x = keras.layers.Dense(8, activation="gelu")(keras.layers.Flatten()(inputs))   # GELU: no TFLM kernel
    content = convert.convert(keras.Model(inputs, keras.layers.Dense(tiny_dataset.num_classes)(x)), "int8", "int8",
                              data.representative_samples(tiny_dataset, 20), static_batch=True)
    assert "GELU" in micro.op_names(content)
    compatibility, metrics = micro.verify(content, config.MicroTargetConfig(), tiny_dataset.x_test[:5],
                                          tiny_dataset.y_test[:5])
    rule = compatibility["details"]["rules"][0]
    assert not compatibility["ok"] and rule["rule"] == "loads_in_tflm" and metrics == {}
    assert "Didn't find op for builtin opcode 'GELU'" in rule["detail"] and "64 MB" not in rule["detail"]


def test_budget_failure_names_the_rule_and_the_figures(int8_model, tiny_dataset):
    tiny_board = config.MicroTargetConfig(flash_kb=1, ram_kb=1)
    compatibility, _ = micro.verify(int8_model, tiny_board, tiny_dataset.x_test[:5], tiny_dataset.y_test[:5])
    failed = {r["rule"]: r["detail"] for r in compatibility["details"]["rules"] if not r["ok"]}
    assert not compatibility["ok"]
    assert "of 1 KB flash" in failed["fits_flash"]
    if "fits_ram" in failed:
        assert "of 1 KB RAM" in failed["fits_ram"]


def test_c_array_round_trips_to_the_same_bytes(int8_model, tmp_path):
    paths = micro.write_sources(int8_model, tmp_path)
    assert [p.name for p in paths] == ["model_data.h", "model_data.cc", "op_resolver.h"]
    source = (tmp_path / "model_data.cc").read_text()
    assert "alignas(16) const unsigned char g_model_data[]" in source
    assert f"g_model_data_len = {len(int8_model)};" in source
    assert micro.parse_c_array(source) == int8_model


def test_op_resolver_registers_exactly_the_models_ops(int8_model, tmp_path):
    micro.write_sources(int8_model, tmp_path)
    header = (tmp_path / "op_resolver.h").read_text()
    ops = micro.op_names(int8_model)
    assert f"MicroMutableOpResolver<{len(ops)}>" in header
    assert header.count("resolver.Add") == len(ops)
    for op in ops:
        assert f"resolver.{micro.resolver_method(op)}()" in header


@pytest.mark.parametrize("op, method", [("CONV_2D", "AddConv2D"), ("DEPTHWISE_CONV_2D", "AddDepthwiseConv2D"),
                                        ("FULLY_CONNECTED", "AddFullyConnected"), ("MAX_POOL_2D", "AddMaxPool2D"),
                                        ("RELU6", "AddRelu6"), ("MEAN", "AddMean")])
def test_resolver_method_names_follow_tflm(op, method):
    assert micro.resolver_method(op) == method


def test_unknown_board_is_a_config_error():
    with pytest.raises(config.ConfigError, match="board 'uno' is unknown; allowed: cortex_m4_256k"):
        config.from_dict({"targets": [{"micro": {"board": "uno"}}]})


def test_lut_compression_of_a_clustered_model_shrinks_it_and_keeps_tflm_outputs(tiny_dataset, tmp_path):
    from edgecomp import data, models, stages
    from edgecomp._keras import keras
    from edgecomp.targets.convert import convert

    keras.utils.set_random_seed(0)
    inputs = keras.Input(tiny_dataset.input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(512, activation="relu")(x)  # big enough for the tables to pay off
    outputs = keras.layers.Dense(tiny_dataset.num_classes)(x)
    model = keras.Model(inputs, outputs)
    context = stages.StageContext(config.from_dict({}), tiny_dataset, tmp_path)
    clustered, _ = stages.apply("cluster", models.copy(model), config.ClusterConfig(clusters=8, epochs=1), context)
    content = convert(clustered, "int8", "int8", data.representative_samples(tiny_dataset, 30))
    compressed, record = micro.lut_variant(content, 8, tiny_dataset.x_test[:20])
    assert compressed is not None, record
    assert record["outputs_identical"] and len(compressed) < len(content)
    assert record["flash_bytes_after"] == len(compressed)
    assert "TFLM_DECODE" in micro.op_names(compressed)


def _tensor_names_and_misaligned_buffers(content: bytes) -> tuple[list, int]:
    import numpy as np
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(content, 0)
    start = np.frombuffer(content, np.uint8).ctypes.data
    names = [model.Subgraphs(0).Tensors(i).Name() for i in range(model.Subgraphs(0).TensorsLength())]
    misaligned = sum((model.Buffers(i).DataAsNumpy().ctypes.data - start) % 16 != 0
                     for i in range(model.BuffersLength()) if model.Buffers(i).DataLength())
    return names, misaligned


def test_stripping_strings_drops_names_keeps_buffers_aligned_and_tflm_outputs(int8_model, tiny_dataset):
    import numpy as np

    stripped = micro.strip_strings(int8_model)
    names, misaligned = _tensor_names_and_misaligned_buffers(stripped)
    assert names and all(name is None for name in names)
    assert misaligned == 0          # TensorFlow's flatbuffer_utils writer leaves buffers 1-byte aligned
    assert all(_tensor_names_and_misaligned_buffers(int8_model)[0])
    assert len(stripped) < len(int8_model) - 10 * len(names)
    x = tiny_dataset.x_test[:20]
    arena = micro.find_arena(int8_model, x[0])
    assert np.array_equal(micro.predict(stripped, x, arena), micro.predict(int8_model, x, arena))


@pytest.mark.slow
def test_run_with_a_cluster_stage_reports_micro_flash_against_the_baselines_plain_int8_file(tmp_path):
    from edgecomp import data, models, pipeline
    from edgecomp.targets.convert import convert

    cfg = config.from_dict({
        "name": "lut", "output_dir": str(tmp_path),
        "data": {"source": "digits", "calibration_samples": 50},
        "model": {"zoo": "digits_cnn", "args": {"width": 0.5}},
        "train": {"epochs": 1},
        "stages": [{"cluster": {"clusters": 8, "epochs": 1}}],
        "targets": [{"micro": {"test_samples": 60}}],
    })
    report = pipeline.run(cfg)
    details = report.targets[0].compatibility["details"]
    baseline = models.load(cfg.run_dir / "checkpoints/00_baseline/model.h5")
    dataset = data.load(cfg.data, cfg.seed)
    plain = micro.strip_strings(convert(baseline, "int8", "int8", data.representative_samples(dataset, 50)))
    assert details["plain_int8_flash_bytes"] == len(plain)
    assert details["flash_ratio_to_plain_int8"] == pytest.approx(report.targets[0].size_bytes / len(plain))
    assert details["stripped_string_bytes"] > 0
    lut = details["lut"]
    assert lut["outputs_identical"], lut
    assert lut["ratio_to_plain_int8"] == pytest.approx((cfg.run_dir / "micro/model_lut.tflite").stat().st_size
                                                       / len(plain))
    assert all(item["tensor"].startswith("weights of op ") for item in lut["tensors"])   # names were stripped
    names, _ = _tensor_names_and_misaligned_buffers((cfg.run_dir / "micro/model.tflite").read_bytes())
    assert all(name is None for name in names)
    text = (cfg.run_dir / "report.md").read_text()
    assert f"{lut['ratio_to_plain_int8']:.3f}× the baseline's plain int8 file" in text
    assert "input 0 (names stripped) int8" in text


@pytest.mark.parametrize("rank", [1, 2])
def test_dilated_convs_converted_with_batch_1_run_the_same_in_tflm_and_litert(rank):
    """With a dynamic batch a dilated conv becomes SPACE_TO_BATCH_ND + CONV_2D + BATCH_TO_SPACE_ND, which
    TFLM computes differently; the micro target converts with batch 1: one CONV_2D, outputs that agree."""
    import numpy as np

    from edgecomp._keras import keras
    from edgecomp.targets import convert

    keras.utils.set_random_seed(0)
    shape = (40, 1) if rank == 1 else (12, 12, 1)
    conv = keras.layers.Conv1D if rank == 1 else keras.layers.Conv2D
    pool = keras.layers.GlobalAveragePooling1D if rank == 1 else keras.layers.GlobalAveragePooling2D
    inputs = keras.Input(shape)
    x = conv(8, 3, padding="same", activation="relu")(inputs)
    x = conv(8, 3, padding="same", dilation_rate=2, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(pool()(x)))
    rng = np.random.default_rng(0)
    x_test = rng.random((40, *shape), dtype=np.float32)
    y_test = rng.integers(0, 3, 40)
    content = convert.convert(model, "int8", "int8", x_test[:20], static_batch=True)
    assert "SPACE_TO_BATCH_ND" not in micro.op_names(content)
    compatibility, metrics = micro.verify(content, config.MicroTargetConfig(), x_test, y_test)
    assert compatibility["ok"], compatibility["details"]["rules"]
    assert metrics["accuracy"] == metrics["litert_accuracy"]
