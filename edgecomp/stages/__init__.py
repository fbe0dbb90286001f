"""Compression stages: each ``apply(model, params, context) -> (new_model, StageRecord)``.

Each stage module also declares its facts, ``facts(params) -> Facts`` (structural,
checkpointed, the name later stages see, the keys that hold its training), and
``run`` is the one way the run, ``edgecomp.compress`` and the search's structure
check run a stage: seeded, on a copy of the model, timed.

The pipeline hands every stage a deep copy (tfmot wraps layer objects in place)
and keeps the stage's returned model; each stage records what it did and what it
skipped. ``config.STAGE_NAMES`` lists the keys ``apply`` accepts (the config's
schema admits no other, without importing TensorFlow).

One module per stage: ``distill.py``, ``low_rank.py``, ``prune.py`` (``structure:
filters`` in ``filters.py``, with ``filter_plan.py`` and ``filter_sensitivity.py``),
``cluster.py`` and ``quantize.py`` (with ``prepare.py``, ``quantize_ranges.py`` and
``quantize_keep.py``). ``common.py`` holds what they share; ``batchnorm.py`` folds
BatchNormalization for ``cluster: {fold_batchnorm: true}``.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from pathlib import Path

from edgecomp.config import STAGE_NAMES, Config
from edgecomp.data import Dataset


@dataclasses.dataclass(frozen=True)
class Facts:
    """What a stage is, for whoever runs stages.

    Attributes:
        structural: it changes the architecture (fewer filters, factorized layers), so the
            file's size and latency are known before any training: the search measures
            them first, with ``training_keys`` at 0.
        checkpointed: its model reloads from a checkpoint (``--resume``); tfmot's QAT
            wrappers do not, so QAT, always the last stage, runs again.
        recorded_as: its name in ``StageContext.previous`` for the stages after it
            (filter pruning is ``prune_filters``: it leaves no zeros to preserve).
        training_keys: the keys that hold its training epochs.
    """

    structural: bool
    checkpointed: bool
    recorded_as: str
    training_keys: tuple[str, ...]

    def untrained(self, params):
        """``params`` with every training key at 0: the stage's structure, without its training."""
        return params.model_copy(update={key: 0 for key in self.training_keys})


def _module(kind: str):
    if kind not in STAGE_NAMES:
        raise ValueError(f"unknown stage {kind!r}; available: {', '.join(STAGE_NAMES)}")
    return importlib.import_module(f"edgecomp.stages.{kind}")


def facts(kind: str, params) -> Facts:
    """Stage ``kind``'s facts with its config ``params``."""
    return _module(kind).facts(params)


def run(kind: str, model, params, context: "StageContext", seed: int):
    """Runs one stage as every caller does: seeded with ``seed``, on a copy of ``model``, timed.

    The copy matters: tfmot wraps layer objects in place, and the caller keeps ``model``.
    Returns ``(new_model, StageRecord)`` with ``record.seconds`` set.
    """
    from edgecomp import models
    from edgecomp._keras import keras

    keras.utils.set_random_seed(seed)
    started = time.time()
    new_model, record = apply(kind, models.copy(model), params, context)
    record.seconds = time.time() - started
    return new_model, record


def apply(kind: str, model, params, context: "StageContext"):
    """Runs stage ``kind`` (one of ``config.STAGE_NAMES``); returns ``(model, StageRecord)``."""
    return _module(kind).apply(model, params, context)


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What a stage may use besides the model and its own parameters.

    Attributes:
        config: the whole run config.
        dataset: the data (train/val for fine-tuning, test for the record).
        log_dir: TensorBoard folder for this stage.
        previous: kinds of the stages that ran before, in order (e.g. ``("prune",)``); filter pruning
            is ``"prune_filters"`` (it leaves no zeros for QAT or clustering to preserve).
    """

    config: Config
    dataset: Dataset
    log_dir: Path
    previous: tuple[str, ...] = ()
