"""The run's baseline: the configured model built and trained, and stopped when it learned nothing.

``train`` makes the float model that every stage starts from and its ``baseline``
record; ``check_learned`` stops the run when its test accuracy is near chance.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from edgecomp import data, models, training
from edgecomp.config import Config
from edgecomp.errors import NotLearnedError
from edgecomp.report import StageRecord

log = logging.getLogger("edgecomp")


def train(cfg: Config, dataset: data.Dataset, run_dir: Path):
    """Builds the configured model and trains it on ``dataset``: the float model every stage starts from.

    Returns:
        ``(model, record)``: the trained model and its ``baseline`` stage record.

    Raises:
        NotLearnedError: its test accuracy is near chance (``check_learned``).
    """
    started = time.time()
    samples = dataset.x_val if len(dataset.x_val) else dataset.x_train
    model = models.build(cfg.model, dataset.input_shape, dataset.num_classes, samples=samples[:32])
    log.info("baseline: %s, %s params, training %d epochs", model.name, f"{models.count_params(model):,}",
             cfg.train.epochs)
    history = training.fit(
        model, dataset, epochs=cfg.train.epochs, learning_rate=cfg.train.learning_rate,
        batch_size=cfg.data.batch_size, log_dir=run_dir / "logs" / "00_baseline",
        patience=cfg.train.early_stopping_patience,
    )
    accuracy = training.accuracy(model, dataset.x_test, dataset.y_test)
    log.info("baseline Keras test accuracy %.4f", accuracy)
    details = {"model": model.name, "epochs": cfg.train.epochs}
    if history is not None:
        details["epochs_run"] = len(history.epoch)
        details["training"] = history.notes
    check_learned(cfg, accuracy, training.chance_accuracy(dataset.y_test), details)
    record = StageRecord(
        stage="baseline", params=models.count_params(model), nonzero_params=models.count_nonzero_params(model),
        metrics={"accuracy": accuracy}, seconds=time.time() - started, details=details,
    )
    return model, record


def check_learned(cfg: Config, accuracy: float, chance: float, details: dict) -> None:
    """Stops the run when the float model's test accuracy is near chance: nothing after it would mean anything.

    Raises:
        NotLearnedError: with the figures, the likely causes and the keys to change.
    """
    if not cfg.train.stop_if_not_learned or not training.near_chance(accuracy, chance):
        return
    if cfg.train.epochs == 0:
        causes = ("the given weights were not trained for this data (set train.epochs > 0), or the data is scaled "
                  "differently from what the model was trained on")
    else:
        causes = ("too few epochs (train.epochs), a learning rate too high or too low (train.learning_rate), "
                  "inputs scaled differently from what the model expects, or BatchNorm statistics that never "
                  "caught up (edgecomp re-estimates them when it sees the gap)")
    done = "; ".join(details.get("training", [])) or "no training decisions recorded"
    raise NotLearnedError(
        f"the float model's test accuracy is {accuracy:.4f}, near chance ({chance:.4f}): compressing it would "
        f"measure nothing. Likely causes: {causes}. Training: {done}. "
        "Set train.stop_if_not_learned: false to go on anyway")
