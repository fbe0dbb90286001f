"""A run killed with SIGKILL resumes to the same artifacts as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import ROOT

CONFIG = {
    "name": "killed",
    "seed": 3,
    "data": {"source": "synthetic", "image_size": [6, 6], "num_classes": 3, "samples": 240, "calibration_samples": 20},
    "model": {"zoo": "digits_cnn", "args": {"width": 0.25}},
    "train": {"epochs": 3},
    "stages": [{"prune": {"min_weights": 0, "sparsity": 0.5, "epochs": 2, "recovery_epochs": 0}}, {"cluster": {"clusters": 8, "epochs": 1}},
               {"quantize": {"epochs": 1}}],
    "targets": [{"cpu": {"quantization": "int8"}}],
    "benchmark": {"runs": 2, "warmup": 0},
}


def start(config_path, *extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "edgecomp.train", f"--config={config_path}", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_config(folder):
    folder.mkdir(parents=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "output_dir": str(folder / "models")}))
    return path, folder / "models" / "killed"


@pytest.fixture(scope="module")
def straight_dir(tmp_path_factory):
    """The same config run once without interruption."""
    config_path, run_dir = write_config(tmp_path_factory.mktemp("straight") / "run")
    assert start(config_path).wait(timeout=600) == 0
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", ["checkpoints/01_prune/record.json", "checkpoints/02_cluster/record.json"])
def test_sigkill_then_resume_gives_the_same_files_as_an_uninterrupted_run(tmp_path, kill_after, straight_dir):
    killed_config, killed_dir = write_config(tmp_path / "killed")
    process = start(killed_config)
    deadline = time.time() + 600
    while not (killed_dir / kill_after).exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "report.json").exists()
    assert not any(p.name.endswith(".tmp") for p in killed_dir.rglob("*") if p.parent.name != "checkpoints")

    assert start(killed_config, "--resume").wait(timeout=600) == 0
    for relative in ("reference/model.tflite", "cpu/model.tflite"):
        assert (killed_dir / relative).read_bytes() == (straight_dir / relative).read_bytes(), relative
    straight = json.loads((straight_dir / "report.json").read_text())
    resumed = json.loads((killed_dir / "report.json").read_text())
    assert [s["metrics"] for s in resumed["stages"]] == [s["metrics"] for s in straight["stages"]]
    assert [t["metrics"] for t in resumed["targets"]] == [t["metrics"] for t in straight["targets"]]
