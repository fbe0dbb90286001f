"""Compression stages: each ``apply(model, params, context) -> (new_model, StageRecord)``.

The pipeline hands every stage a deep copy (tfmot wraps layer objects in place)
and keeps the stage's returned model; each stage records what it did and what it
skipped. ``config.AVAILABLE_STAGES`` lists the keys ``apply`` accepts, so the
config can reject the others without importing TensorFlow.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

from edgecomp.config import AVAILABLE_STAGES, Config
from edgecomp.data import Dataset



def apply(kind: str, model, params, context: "StageContext"):
    """Runs stage ``kind`` (``prune``, ``cluster``, ``quantize``); returns ``(model, StageRecord)``."""
    if kind not in AVAILABLE_STAGES:
        raise ValueError(f"unknown stage {kind!r}; available: {', '.join(AVAILABLE_STAGES)}")
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
