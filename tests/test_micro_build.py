"""The micro project compiled against real TensorFlow Lite Micro sources and run.

The TFLM trees are TFLM's own ``create_tflm_tree.py`` exports, kept outside the project
(``EDGECOMP_TFLM_TARBALLS``, default ``../shared/tflm`` beside the checkout) because no
registry ships TFLM's C++ sources; tests skip without them or without the compilers.
The host build (g++) runs always; the Cortex-M4 build (arm-none-eabi-gcc + newlib, run
under qemu-system-arm -M mps2-an386) is marked slow.
"""

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edgecomp import config, runtime
from edgecomp.targets import micro, micro_build, micro_project

TARBALLS = Path(os.environ.get("EDGECOMP_TFLM_TARBALLS", Path(__file__).resolve().parents[2] / "shared" / "tflm"))
TREES = {"host": "tree_host.tar.gz", "cortex_m4": "tree_cm4_cmsis_nn.tar.gz"}


def _tree(tmp_path_factory, target: str) -> Path:
    tarball = TARBALLS / TREES[target]
    if not tarball.is_file():
        pytest.skip(f"no TFLM source tree at {tarball} (set EDGECOMP_TFLM_TARBALLS)")
    missing = micro_build.missing_tools(target)
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    folder = tmp_path_factory.mktemp(f"tflm_{target}")
    with tarfile.open(tarball) as archive:
        archive.extractall(folder, filter="data")
    tree = next(path.parents[3] for path in folder.glob("*/tensorflow/lite/micro/micro_interpreter.h"))
    compression = tree / "tensorflow/lite/micro/compression"   # left out by the export (tests/data/tflm/README.md)
    compression.mkdir(exist_ok=True)
    shutil.copy(Path(__file__).parent / "data/tflm/metadata_saved.h", compression)
    return tree


@pytest.fixture(scope="session")
def host_tree(tmp_path_factory):
    return _tree(tmp_path_factory, "host")


@pytest.fixture(scope="session")
def cortex_m4_tree(tmp_path_factory):
    return _tree(tmp_path_factory, "cortex_m4")


@pytest.fixture(scope="module")
def int8_model(converted):
    return converted("int8", "int8")


def _project(content: bytes, folder: Path, dataset) -> np.ndarray:
    """Writes the sources and the project as the pipeline does; returns the Python TFLM run's raw outputs."""
    io = runtime.io_details(content)
    count = micro_project.example_samples(io, dataset.x_test)
    arena = micro.find_arena(content, dataset.x_test[0])
    expected = micro.predict(content, dataset.x_test[:count], arena, raw=True)
    micro.write_sources(content, folder)
    micro_project.write_project(content, io, folder, dataset.x_test[:count], dataset.y_test[:count], expected, arena)
    return expected


def test_every_tflm_builtin_op_gets_the_resolver_method_tflm_declares(host_tree, tmp_path):
    header = (host_tree / "tensorflow/lite/micro/micro_mutable_op_resolver.h").read_text()
    declared = {}
    for method, body in re.findall(r"TfLiteStatus (Add\w+)\((.*?)\n  }", header, re.S):
        operator = re.search(r"BuiltinOperator_(\w+)", body)
        if operator and method not in ("AddBuiltin", "AddCustom"):   # AddCustom takes a name and a registration
            declared[operator.group(1)] = method
    assert len(declared) >= 90
    assert {op: micro.resolver_method(op) for op in declared} == declared
    # and a resolver of every one of them compiles against the tree's headers
    (tmp_path / "op_resolver.h").write_text(micro.resolver_header(sorted(declared)))
    (tmp_path / "all_ops.cc").write_text('#include "op_resolver.h"\n'
                                         "ModelOpResolver resolver;\nint main() { return RegisterModelOps(resolver); }\n")
    compiled = subprocess.run(["g++", "-std=c++17", "-fsyntax-only", "-DTF_LITE_STATIC_MEMORY", f"-I{tmp_path}",
                               f"-I{host_tree}", f"-I{host_tree}/third_party/flatbuffers/include", f"-I{host_tree}/third_party/gemmlowp",
                               str(tmp_path / "all_ops.cc")], capture_output=True, text=True, check=False)
    assert compiled.returncode == 0, compiled.stderr[-2000:]


def test_host_build_runs_the_samples_byte_identical_to_the_python_tflm_run(int8_model, tiny_dataset, host_tree,
                                                                           tmp_path):
    expected = _project(int8_model, tmp_path, tiny_dataset)
    builds = micro_build.check(int8_model, tmp_path, {"host": str(host_tree)}, expected, tiny_dataset.y_test)
    host = builds["host"]
    assert host["ok"], host["rules"]
    assert host["samples"] == len(expected) == micro_project.EXAMPLE_SAMPLES
    assert f"{len(expected)} of {len(expected)} samples' outputs byte-identical" in host["rules"][1]["detail"]
    python_accuracy = float((expected.argmax(-1) == tiny_dataset.y_test[: len(expected)]).mean())
    assert host["accuracy"] == python_accuracy
    assert host["model_bytes"] == len(int8_model) and host["runtime_bytes"] > 20_000
    assert 0 < host["arena_used_bytes"] <= host["arena_bytes"]
    assert not (tmp_path / "build").exists()   # the folder handed to the user stays sources only


def test_the_generated_makefile_builds_and_runs_without_edgecomp(int8_model, tiny_dataset, host_tree, tmp_path):
    """What a user does with the folder: make TFLM_TREE=... run, here with only the kernels the model needs."""
    _project(int8_model, tmp_path, tiny_dataset)
    kernels = "kernel_util.cc conv.cc conv_common.cc fully_connected.cc fully_connected_common.cc reduce.cc reduce_common.cc"
    sources = " ".join(f"$(TFLM_TREE)/tensorflow/lite/micro/kernels/{name}" for name in kernels.split())
    done = subprocess.run(["make", "-C", str(tmp_path), "-j2", "run", f"TFLM_TREE={host_tree}", f"KERNEL_SRCS={sources}",
                           f"LIB_BUILD={micro_build._library_cache(host_tree, 'host', [])}"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert f"identical_to_python_tflm {micro_project.EXAMPLE_SAMPLES}/{micro_project.EXAMPLE_SAMPLES}" in done.stdout
    assert re.search(r"^accuracy \d+/32$", done.stdout, re.M)


def test_a_model_with_batch_matmul_builds_and_matches(tiny_dataset, host_tree, tmp_path):
    from edgecomp import data
    from edgecomp._keras import keras
    from edgecomp.targets import convert

    keras.utils.set_random_seed(1)
    inputs = keras.Input(tiny_dataset.input_shape)
    rows = keras.layers.Reshape((6, 6))(inputs)
    x = keras.layers.Dot(axes=(2, 2))([rows, keras.layers.Dense(6)(rows)])   # BATCH_MATMUL
    outputs = keras.layers.Dense(tiny_dataset.num_classes)(keras.layers.Flatten()(x))
    content = convert.convert(keras.Model(inputs, outputs), "int8", "int8",
                              data.representative_samples(tiny_dataset, 50), static_batch=True)
    assert "BATCH_MATMUL" in micro.op_names(content)
    expected = _project(content, tmp_path, tiny_dataset)
    assert "resolver.AddBatchMatMul()" in (tmp_path / "op_resolver.h").read_text()
    host = micro_build.check(content, tmp_path, {"host": str(host_tree)}, expected, tiny_dataset.y_test)["host"]
    assert host["ok"], host["rules"]


def test_a_build_that_cannot_happen_fails_its_rule_with_one_line(int8_model, tiny_dataset, tmp_path):
    expected = _project(int8_model, tmp_path, tiny_dataset)
    builds = micro_build.check(int8_model, tmp_path, {"host": str(tmp_path / "no_tree")}, expected,
                               tiny_dataset.y_test)
    rule = builds["host"]["rules"][0]
    assert not builds["host"]["ok"] and rule["rule"] == "builds_host"
    assert "is not a TFLM source tree" in rule["detail"] and "\n" not in rule["detail"]


def test_a_cortex_m4_build_replaces_the_estimates_of_the_fits_rules(int8_model, tiny_dataset):
    compatibility, _ = micro.verify(int8_model, config.MicroTargetConfig(), tiny_dataset.x_test[:5],
                                    tiny_dataset.y_test[:5])
    rules = {rule["rule"]: rule["detail"] for rule in compatibility["details"]["rules"]}
    assert "an estimate" in rules["fits_flash"] and "64-bit host" in rules["fits_ram"]
    measured = {"ok": True, "rules": [{"rule": "builds_cortex_m4", "ok": True, "detail": "built"}],
                "flash_bytes": 300_000, "model_bytes": len(int8_model), "runtime_bytes": 300_000 - len(int8_model),
                "ram_bytes": 9_000, "arena_bytes": 8_000, "arena_used_bytes": 5_000}
    tight = config.MicroTargetConfig(flash_kb=256, ram_kb=64)
    micro.apply_builds(compatibility, tight, {"cortex_m4": measured})
    rules = {rule["rule"]: rule for rule in compatibility["details"]["rules"]}
    assert not compatibility["ok"] and not rules["fits_flash"]["ok"]          # 293 KB > 256 KB
    assert "measured by a Cortex-M4 build" in rules["fits_flash"]["detail"]
    assert rules["fits_ram"]["ok"] and "5,000 B (32-bit)" in rules["fits_ram"]["detail"]
    assert compatibility["details"]["ram_bytes"] == 5_000 + micro.ALIGNMENT + 1_000


@pytest.mark.slow
def test_cortex_m4_build_under_qemu_is_byte_identical_and_measures_flash_and_arena(int8_model, tiny_dataset,
                                                                                   cortex_m4_tree, tmp_path):
    expected = _project(int8_model, tmp_path, tiny_dataset)
    arm = micro_build.check(int8_model, tmp_path, {"cortex_m4": str(cortex_m4_tree)}, expected,
                            tiny_dataset.y_test)["cortex_m4"]
    assert arm["ok"], arm["rules"]
    assert "QEMU" in arm["rules"][0]["detail"]
    assert arm["model_bytes"] == len(int8_model) and 40_000 < arm["runtime_bytes"] < 400_000
    python_arena = micro.find_arena(int8_model, tiny_dataset.x_test[0])
    assert 0 < arm["arena_used_bytes"] < python_arena     # 32-bit pointers: a smaller arena than on this host


def test_run_with_a_host_build_reports_it_and_a_failed_micro_check_still_writes_the_report(host_tree, tmp_path):
    """A LUT-compressed model (the DECODE op, TFLM built with compression) through the pipeline."""
    from edgecomp import pipeline

    cfg = config.from_dict({
        "name": "built", "output_dir": str(tmp_path),
        "data": {"source": "digits", "calibration_samples": 50},
        "model": {"zoo": "digits_cnn", "args": {"width": 0.5}},
        "train": {"epochs": 1},
        "stages": [{"cluster": {"clusters": 8, "epochs": 1}}],
        "targets": [{"micro": {"test_samples": 60, "flash_kb": 16, "build": {"host": str(host_tree)}}}],
    })
    report = pipeline.run(cfg)
    record = report.targets[0]
    rules = {rule["rule"]: rule for rule in record.compatibility["details"]["rules"]}
    assert rules["builds_host"]["ok"] and rules["identical_host"]["ok"], rules
    assert "TFLM_DECODE" in micro.op_names((cfg.run_dir / "micro/model_lut.tflite").read_bytes())
    assert "-DUSE_TFLM_COMPRESSION" in (cfg.run_dir / "micro/Makefile").read_text()
    assert not rules["fits_flash"]["ok"] and not record.compatibility["ok"]   # 16 KB cannot hold TFLM
    text = (cfg.run_dir / "report.md").read_text()
    assert "## Microcontroller" in text and "host: 32 samples byte-identical" in text
    assert "FAILED `fits_flash`" in text and "(an estimate; build for cortex_m4 to measure)" in text
    assert sorted(path.name for path in (cfg.run_dir / "micro").iterdir()) == [
        "Makefile", "cortex_m4", "edgecomp_model.cc", "edgecomp_model.h", "labels.txt", "main.cc", "model.tflite",
        "model_data.cc", "model_data.h", "model_lut.tflite", "op_resolver.h", "test_samples.cc", "test_samples.h"]


def test_report_of_a_micro_file_tflm_cannot_load_renders(tmp_path):
    from edgecomp import report as report_module

    failed = report_module.TargetRecord(
        target="micro", quantization="int8", path="micro/model.tflite", size_bytes=100, gzip_bytes=90, metrics={},
        compatibility={"ok": False, "details": {"rules": [{"rule": "loads_in_tflm", "ok": False,
                                                             "detail": "Didn't find op for builtin opcode 'SHAPE'"}]}})
    text = report_module.render(report_module.Report(name="x", edgecomp_version="0", targets=[failed]))
    assert "| micro | int8 | 0.1 KB | 0.1 KB | n/a |" in text
    assert "FAILED `loads_in_tflm`: Didn't find op for builtin opcode 'SHAPE'" in text
