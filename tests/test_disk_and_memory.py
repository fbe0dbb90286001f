"""A full disk or an output folder that cannot be written: exit 2, one line, no half-written artifact.

A full disk is a tiny tmpfs and a read-only folder a read-only tmpfs (tests run as
root here, and root ignores file modes); both need ``mount``, so without root or
where mounting is not permitted those tests are skipped and say why. Evaluation
reads the test split one batch at a time.
"""

import os
import shutil
import subprocess
import tracemalloc

import numpy as np
import pytest
import yaml

from conftest import run_cli
from edgecomp import config, files, pipeline, runtime
from edgecomp.errors import EdgecompError, OutputError

TRAIN = {
    "name": "full",
    "seed": 0,
    "data": {"source": "synthetic", "image_size": [6, 6], "num_classes": 3, "samples": 120,
             "calibration_samples": 10},
    "model": {"zoo": "digits_cnn", "args": {"width": 0.25}},
    "train": {"epochs": 1, "stop_if_not_learned": False},
    "targets": [{"cpu": {"quantization": "int8"}}],
    "benchmark": {"runs": 2, "warmup": 0},
}


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size, read_only=False)`` → a freshly mounted folder, unmounted after the test."""
    mounted = []

    def mount(size: str = "64k", read_only: bool = False):
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("mounting a tmpfs needs root and mount(8); chmod does not stop root")
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"mount is not permitted here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder):
    """Fills a tmpfs to the last byte."""
    with open(folder / "filler", "wb", buffering=0) as stream:
        try:
            while True:
                stream.write(b"\0" * 4096)
        except OSError:
            pass


def files_under(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_full_disk_write_names_the_path_and_keeps_the_previous_file(tmpfs, converted):
    disk = tmpfs("64k")
    path = disk / "cpu" / "model.tflite"
    previous = converted("float32")
    files.write_bytes(path, previous)
    with pytest.raises(OutputError, match=f"cannot write {path}: no space left on device; free space"):
        files.write_bytes(path, os.urandom(200_000))
    assert path.read_bytes() == previous
    assert files_under(disk) == ["cpu", "cpu/model.tflite"]


def test_full_disk_checkpoint_folder_is_not_left_half_written(tmpfs):
    disk = tmpfs("64k")
    folder = disk / "checkpoints" / "00_baseline"
    with pytest.raises(OutputError, match=f"cannot write {folder}: no space left on device"):
        files.write_dir(folder, {"model.h5": os.urandom(200_000), "record.json": b"{}"})
    assert files_under(disk) == ["checkpoints"]


def test_read_only_folder_write_is_one_clear_line(tmpfs):
    folder = tmpfs(read_only=True)
    with pytest.raises(OutputError, match=f"cannot write {folder}/cpu/model.tflite: read-only file system"):
        files.write_bytes(folder / "cpu" / "model.tflite", b"TFL3")


def test_write_below_a_file_is_one_clear_line(tmp_path):
    blocker = tmp_path / "models"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OutputError, match="a part of the path is a file, not a folder"):
        files.write_text(blocker / "run" / "report.json", "{}")


def test_run_into_a_read_only_output_dir_is_refused_before_any_work(tmpfs):
    folder = tmpfs(read_only=True)
    cfg = config.from_dict({**TRAIN, "output_dir": str(folder / "models")})
    with pytest.raises(EdgecompError, match=f"output_dir: cannot write to {folder}/models.*Read-only file system"):
        pipeline.run(cfg)


@pytest.mark.slow  # trains: about 10 s each
@pytest.mark.parametrize("size, failing_write", [
    ("12k", "logs/00_baseline"),           # TensorBoard's event writer (TensorFlow's own error type)
    ("64k", "checkpoints/00_baseline"),    # the baseline checkpoint (HDF5)
])
def test_train_on_a_full_disk_exits_2_with_one_line_and_no_valid_looking_truncated_file(
        tmpfs, tmp_path, size, failing_write):
    disk = tmpfs(size)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({**TRAIN, "output_dir": str(disk / "models")}))
    done = run_cli("edgecomp.train", f"--config={config_path}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert f"{disk}/models/full/{failing_write}" in line and "no space left on device" in line, line
    run_dir = disk / "models" / "full"
    assert not [p for p in files_under(run_dir) if p.endswith(".tmp") or "/." in f"/{p}"], files_under(run_dir)
    for model in run_dir.rglob("*.tflite"):
        runtime.check_model(model.read_bytes(), str(model))  # whatever is there is complete
    assert not (run_dir / "report.json").exists()


@pytest.mark.parametrize("disk_state", ["full", "read-only"])
def test_bench_json_on_an_unwritable_disk_exits_2_with_one_line(tmpfs, tmp_path, converted, disk_state):
    model = tmp_path / "m.tflite"
    model.write_bytes(converted("float32"))
    if disk_state == "full":
        folder = tmpfs("64k")
        fill(folder)
        expected = "no space left on device"
    else:
        folder = tmpfs(read_only=True)
        expected = "read-only file system"
    out = folder / "out.json"
    done = run_cli("edgecomp.bench", f"--model={model}", "--runs=200", "--warmup=0", f"--json={out}")
    assert done.returncode == 2, done.stderr[-2000:]
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: cannot write {out}: {expected}; "), line
    assert not out.exists()


def test_evaluation_streams_a_memory_mapped_test_split(tmp_path, converted):
    content = converted("float32")
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(40_000, 6, 6, 1))
    x[:] = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    x.flush()
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    y = np.random.default_rng(1).integers(0, 3, len(x))
    runtime.check_model(content)  # the one-off probe is not part of what is measured
    tracemalloc.start()
    try:
        streamed = runtime.evaluate(content, x, y, batch_size=64)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < x.nbytes / 10, f"evaluation allocated {peak:,} bytes for a {x.nbytes:,}-byte test split"
    outputs = runtime.predict(content, np.asarray(x))
    assert streamed == {"accuracy": float(np.mean(outputs.argmax(-1) == y)), "samples": len(x)}


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_get_the_modes_the_umask_gives_not_the_temporary_files_0600(tmp_path, umask, file_mode, folder_mode):
    previous = os.umask(umask)
    try:
        path = files.write_bytes(tmp_path / "model.tflite", b"TFL3")
        folder = files.write_dir(tmp_path / "checkpoint", {"model.h5": b"x"})
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == file_mode
    assert folder.stat().st_mode & 0o777 == folder_mode
