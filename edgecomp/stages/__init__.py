"""Compression stages: each ``apply(model, params, context) -> (new_model, StageRecord)``.

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
from pathlib import Path

from edgecomp.config import STAGE_NAMES, Config
from edgecomp.data import Dataset


def apply(kind: str, model, params, context: "StageContext"):
    """Runs stage ``kind`` (one of ``config.STAGE_NAMES``); returns ``(model, StageRecord)``."""
    if kind not in STAGE_NAMES:
        raise ValueError(f"unknown stage {kind!r}; available: {', '.join(STAGE_NAMES)}")
    module = importlib.import_module(f"edgecomp.stages.{kind}")
    return module.apply(model, params, context)


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
