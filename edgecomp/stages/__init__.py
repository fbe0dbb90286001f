"""Compression stages: each ``apply(model, params, context) -> (new_model, StageRecord)``.

A stage never mutates the model it is given (tfmot wraps layer objects in place,
so stages work on a deep copy) and records what it did and what it skipped.
``STAGES`` maps a config key to its ``apply``; ``config.AVAILABLE_STAGES`` lists
the same keys so that the config can reject the others without importing TF.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgecomp.config import Config
from edgecomp.data import Dataset

STAGES: dict = {}


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What a stage may use besides the model and its own parameters.

    Attributes:
        config: the whole run config.
        dataset: the data (train/val for fine-tuning, test for the record).
        log_dir: TensorBoard folder for this stage.
        previous: kinds of the stages that ran before, in order (e.g. ``("prune",)``).
    """

    config: Config
    dataset: Dataset
    log_dir: Path
    previous: tuple[str, ...] = ()
