"""--resume reuses a stage's checkpoint only on top of the checkpoint it was made from (issue 23).

A checkpoint's fingerprint covered the config only, so after an earlier checkpoint
was made again (it would not load, it was deleted, a search copied another baseline
in) the later ones, trained from the old model, were reused on top of the new one.
And checkpoints were loaded with ``keras.models.load_model`` directly: a tampered
``model.h5`` with a Lambda layer ran its code without ``--trust_model``.
"""

import logging

import numpy as np

from edgecomp import config, files, models
from edgecomp._keras import keras
from edgecomp.checkpoints import CHECKPOINT_FILE, Checkpoints
from edgecomp.report import StageRecord

STAGES = [(0, "baseline"), (1, "prune"), (2, "cluster")]


def make_config(tmp_path, trust=False):
    return config.from_dict({"name": "resumed", "output_dir": str(tmp_path),
                             "model": {"zoo": "digits_cnn", "trust": trust},
                             "stages": [{"prune": {"min_weights": 0, "epochs": 1}}, {"cluster": {"clusters": 8}}]})


def tiny_model(seed, layer=None):
    """A Dense model with seeded weights; ``layer`` (e.g. a Lambda) goes before the Dense."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(2)(layer(inputs) if layer else inputs))


def record(stage):
    return StageRecord(stage=stage, params=10, nonzero_params=10, metrics={"accuracy": 0.5}, seconds=1.0)


def save_all(checkpoints, first_seed=0):
    for index, kind in STAGES:
        checkpoints.save(index, kind, tiny_model(first_seed + index), record(kind))


def reused(checkpoints):
    """Which of STAGES a resumed run reuses, loading them in order as the pipeline does."""
    return [checkpoints.load(index, kind)[0] is not None for index, kind in STAGES]


def test_unchanged_checkpoints_are_all_reused(tmp_path):
    cfg = make_config(tmp_path)
    folder = cfg.run_dir / "checkpoints"
    save_all(Checkpoints(folder, cfg, resume=False))
    resumed = Checkpoints(folder, cfg, resume=True)
    assert resumed.usable(2) == 0b111
    assert reused(resumed) == [True, True, True]


def test_later_checkpoint_is_not_reused_after_an_earlier_one_was_made_again(tmp_path, caplog):
    cfg = make_config(tmp_path)
    folder = cfg.run_dir / "checkpoints"
    save_all(Checkpoints(folder, cfg, resume=False))
    # A resumed run that had to make the prune checkpoint again (here: different weights).
    again = Checkpoints(folder, cfg, resume=True)
    assert again.load(0, "baseline")[0] is not None
    again.save(1, "prune", tiny_model(seed=99), record("prune"))
    with caplog.at_level(logging.INFO, logger="edgecomp"):
        assert again.load(2, "cluster") == (None, None)
    assert "02_cluster follows a stage this run made again; running it again too" in caplog.text
    assert Checkpoints(folder, cfg, resume=True).usable(2) == 0b011


def test_stage_checkpoints_are_not_reused_on_another_baseline_copied_in(tmp_path):
    cfg = make_config(tmp_path)
    folder = cfg.run_dir / "checkpoints"
    save_all(Checkpoints(folder, cfg, resume=False))
    # What a search does before each trial: write its own baseline into the trial's folder.
    files.write_dir(folder / "00_baseline", {
        CHECKPOINT_FILE: models.to_h5_bytes(tiny_model(seed=42)),
        "record.json": (folder / "00_baseline" / "record.json").read_bytes(),
    })
    resumed = Checkpoints(folder, cfg, resume=True)
    assert resumed.usable(2) == 0b001
    assert reused(resumed) == [True, False, False]


def marking_lambda(marker):
    """A Lambda that appends to ``marker`` when it runs (the path is a default argument: no globals needed)."""
    return keras.layers.Lambda(lambda t, m=str(marker): (open(m, "a").close(), t * 2.0)[1], name="marking")


def tampered(tmp_path, trust):
    """(Checkpoints resuming, marker): a valid baseline checkpoint whose model.h5 now holds a marking Lambda."""
    cfg = make_config(tmp_path, trust)
    folder = cfg.run_dir / "checkpoints"
    Checkpoints(folder, cfg, resume=False).save(0, "baseline", tiny_model(0), record("baseline"))
    marker = tmp_path / "lambda-ran"
    content = models.to_h5_bytes(tiny_model(0, marking_lambda(marker)))
    marker.unlink(missing_ok=True)   # building the model called the Lambda: by the test's own hand
    (folder / "00_baseline" / CHECKPOINT_FILE).write_bytes(content)
    return Checkpoints(folder, cfg, resume=True), marker


def test_tampered_checkpoint_with_a_lambda_layer_runs_no_code_without_trust(tmp_path, caplog):
    checkpoints, marker = tampered(tmp_path, trust=False)
    with caplog.at_level(logging.WARNING, logger="edgecomp"):
        assert checkpoints.load(0, "baseline") == (None, None)
    assert not marker.exists(), "the Lambda stored in the checkpoint ran"
    assert "cannot load 00_baseline" in caplog.text and "--trust_model" in caplog.text


def test_tampered_checkpoint_loads_and_runs_its_lambda_only_with_trust(tmp_path):
    checkpoints, marker = tampered(tmp_path, trust=True)
    model, _ = checkpoints.load(0, "baseline")
    assert model is not None and marker.exists()   # so the test above would see the code run
    assert model.predict(np.ones((1, 4)), verbose=0).shape == (1, 2)
