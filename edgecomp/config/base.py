"""What every config section shares: stage, target and zoo names, the bounds of numbers, the strict base model.

The names are listed here so that a bad stage, target or zoo name is reported
without importing TensorFlow. ``_Strict`` is the base of every section: unknown
keys, changes after validation and non-finite floats are refused.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

STAGE_NAMES = ("distill", "low_rank", "prune", "cluster", "quantize")
TARGET_NAMES = ("cpu", "gpu", "edgetpu", "micro")
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8", "int16x8")
# Kept equal to edgecomp.zoo.ARCHITECTURES by a test; listed here so that a bad
# zoo name is reported without importing TensorFlow.
ZOO_NAMES = ("digits_cnn", "mnist1d_cnn", "ds_cnn", "resnet8", "mobilenet_v2")

# Upper bounds of the numbers a config may hold. Each is far above what a real run
# uses; without them a value such as seed 2**32, timeout_s .inf or image_size
# [100000, 100000] passed validation and crashed later with a traceback or MemoryError.
MAX_SEED = 2**31 - 1  # stages and ensemble members seed from seed + a few thousand: NumPy takes < 2**32
MAX_IMAGE_SIDE = 4096
MAX_SAMPLES = 1_000_000
MAX_CLASSES = 10_000
MAX_BATCH_SIZE = 65_536
MAX_CALIBRATION_SAMPLES = 100_000
MAX_EPOCHS = 100_000
MAX_LEARNING_RATE = 10.0
MAX_TEMPERATURE = 1000.0
MAX_TIMEOUT_S = 86_400.0  # one day
MAX_RUNS = 1_000_000
MAX_THREADS = 1024
MAX_MULTIPLE = 4096  # rank_multiple, round_to: channel counts
MAX_COUNT = 2**31 - 1  # counts with no natural limit (weights, KB, test samples)
# float32 values of a data set generated in memory (digits upsampled, synthetic): 8 GiB.
MAX_GENERATED_VALUES = 2**31
DIGITS_SAMPLES = 1797  # scikit-learn's digits
ADB_SERIAL_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:-]*"  # whole string: re.fullmatch


class _Strict(BaseModel):
    # allow_inf_nan: every float key refuses .inf, -.inf and .nan.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _single_key(value: Any) -> Optional[str]:
    """The one key of a stage or target item (a model or a one-key map), which picks its schema; else None."""
    if isinstance(value, BaseModel):
        return next(iter(type(value).model_fields))
    if isinstance(value, dict) and len(value) == 1:
        return str(next(iter(value)))
    return None
