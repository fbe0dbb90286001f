"""Training under ``tf.distribute``: the strategy the config's ``distribute`` section names.

``strategy: none`` changes nothing: no strategy is built and training takes the
same code path, with the same results, as without this section. ``mirrored`` builds
``tf.distribute.MirroredStrategy`` over this host's devices (``devices``, default:
every GPU, else the CPU); ``multi_worker`` builds
``tf.distribute.MultiWorkerMirroredStrategy``, which reads the cluster and this
process's task from the standard ``TF_CONFIG`` environment variable, so any launcher
that sets it (a Kubernetes TFJob, Vertex AI, a SLURM script) can start the workers.

The strategy is built once per process, before TensorFlow runs any other op
(``MultiWorkerMirroredStrategy`` must be); ``setup`` keeps it, ``scope`` enters
it. Models are built, wrapped (pruning, clustering, QAT, the Distiller) and
compiled inside ``scope()``. ``data.batch_size`` is the global batch: each of the N
replicas gets ``batch_size / N`` samples per step; learning rates are not scaled.
Only the chief writes files (``is_chief``).

Example:
    >>> from edgecomp import config, distribute
    >>> distribute.setup(config.DistributeConfig(strategy="mirrored", devices=("/cpu:0",)))  # doctest: +SKIP
    >>> with distribute.scope():                                                               # doctest: +SKIP
    ...     model = build_and_compile()
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from edgecomp.config import DistributeConfig
from edgecomp.errors import ConfigError

TF_CONFIG = "TF_CONFIG"
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')
# Task types MultiWorkerMirroredStrategy trains with; "ps" belongs to ParameterServerStrategy.
TRAINING_TASKS = ("chief", "worker")

# The strategy of this process: (the config it was built from, the strategy or None).
_built: Optional[tuple[DistributeConfig, object]] = None


def read_tf_config(environ: Optional[Mapping[str, str]] = None) -> dict:
    """Reads and checks ``TF_CONFIG``: the cluster's addresses and this process's task.

    Does not import TensorFlow, so a bad ``TF_CONFIG`` is reported at once.

    Args:
        environ: the environment to read (default ``os.environ``).

    Returns:
        The parsed ``TF_CONFIG`` dict, with ``task.index`` an int.

    Raises:
        ConfigError: the variable is missing, is not JSON, or does not describe a task of the cluster.
    """
    environ = os.environ if environ is None else environ
    text = environ.get(TF_CONFIG, "").strip()
    fix = f"set it on every host to e.g. '{TF_CONFIG_EXAMPLE}' (README, 'Training on several devices')"
    if not text:
        raise ConfigError(f"distribute.strategy is multi_worker but the {TF_CONFIG} environment variable is not set; "
                          f"{fix}, or use strategy: none or mirrored on one host")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{TF_CONFIG} is not valid JSON ({error.msg} at character {error.pos}); {fix}") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("cluster"), dict) \
            or not isinstance(parsed.get("task"), dict):
        raise ConfigError(f"{TF_CONFIG} must be a JSON object with the keys 'cluster' and 'task'; {fix}")
    cluster, task = parsed["cluster"], parsed["task"]
    for task_type, addresses in cluster.items():
        if task_type not in TRAINING_TASKS:
            raise ConfigError(f"{TF_CONFIG}: cluster has a {task_type!r} job; multi_worker trains with "
                              f"{' and '.join(TRAINING_TASKS)} tasks only (parameter servers and evaluators "
                              "are not supported); remove it")
        if not isinstance(addresses, list) or not addresses or not all(
                isinstance(a, str) and re.fullmatch(r"\[?[A-Za-z0-9_.:-]+\]?:\d{1,5}", a) for a in addresses):
            raise ConfigError(f"{TF_CONFIG}: cluster.{task_type} must be a non-empty list of 'host:port' strings, "
                              f"got {addresses!r}")
    if len(cluster.get("chief", [])) > 1:
        raise ConfigError(f"{TF_CONFIG}: cluster.chief lists {len(cluster['chief'])} addresses; at most one chief")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in cluster:
        raise ConfigError(f"{TF_CONFIG}: task.type {task_type!r} is not a job of the cluster "
                          f"({', '.join(cluster) or 'none'}); set task.type to one of them")
    if isinstance(index, str) and index.isdigit():
        index = int(index)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[task_type]):
        raise ConfigError(f"{TF_CONFIG}: task.index {index!r} is out of range; cluster.{task_type} has "
                          f"{len(cluster[task_type])} address(es), so use 0 to {len(cluster[task_type]) - 1}")
    return {**parsed, "task": {**task, "type": task_type, "index": index}}


def chief_task(tf_config: dict) -> bool:
    """Whether the task of a parsed ``TF_CONFIG`` is the chief: ``chief``, else worker 0."""
    task = tf_config["task"]
    if "chief" in tf_config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and task["index"] == 0


def setup(cfg: DistributeConfig):
    """Builds the strategy ``cfg`` names, once per process; returns it (None for ``none``).

    Call it before TensorFlow runs anything else: ``MultiWorkerMirroredStrategy``
    configures the collective ops at startup, and ``devices`` that name more CPUs
    than the host has split the CPU into logical devices, which TensorFlow allows
    only before it first uses the CPU.

    Raises:
        ConfigError: ``TF_CONFIG`` is missing or invalid, a device does not exist, or
            a second, different multi-worker strategy is asked for in the same process.
    """
    global _built
    if _built is not None:
        built_cfg, strategy = _built
        if built_cfg == cfg:
            return strategy
        if built_cfg.strategy == "multi_worker":
            raise ConfigError("distribute: this process already joined a multi_worker cluster; TensorFlow "
                              "cannot leave it; run the other config in a new process")
    if cfg.strategy == "none":
        strategy = None
    elif cfg.strategy == "mirrored":
        strategy = _mirrored(cfg.devices)
    else:
        strategy = _multi_worker()
    _built = (cfg, strategy)
    return strategy


def _mirrored(devices):
    from edgecomp._keras import tf

    if devices is None:
        return tf.distribute.MirroredStrategy()
    _split_cpu_if_asked(devices)
    available = {_canonical(d.name) for d in tf.config.list_logical_devices()}
    missing = [d for d in devices if _canonical(d) not in available]
    if missing:
        raise ConfigError(f"distribute.devices: {', '.join(missing)} not found; this process has "
                          f"{', '.join(sorted(available))}; list existing devices or leave devices out")
    return tf.distribute.MirroredStrategy(list(devices))


def _canonical(name: str) -> str:
    """``/gpu:0``, ``GPU:0`` and ``/job:localhost/replica:0/task:0/device:GPU:0`` → ``GPU:0``."""
    match = re.search(r"(cpu|gpu):(\d+)$", name, flags=re.IGNORECASE)
    return f"{match.group(1).upper()}:{match.group(2)}" if match else name


def _split_cpu_if_asked(devices) -> None:
    """Splits the CPU into logical devices when ``devices`` names more CPUs than exist.

    For trying a multi-device setup on a machine without GPUs (tests, laptops):
    the replicas share the same cores, so it is not faster.
    """
    from edgecomp._keras import tf

    wanted = max((int(_canonical(d)[4:]) + 1 for d in devices if _canonical(d).startswith("CPU:")), default=0)
    physical = tf.config.list_physical_devices("CPU")   # listing logical devices would start TensorFlow
    if wanted <= len(physical) or wanted == len(tf.config.get_logical_device_configuration(physical[0]) or ()):
        return
    try:
        tf.config.set_logical_device_configuration(physical[0], [tf.config.LogicalDeviceConfiguration()] * wanted)
    except RuntimeError:
        raise ConfigError(f"distribute.devices names {wanted} CPUs but TensorFlow already started with "
                          f"{len(tf.config.list_logical_devices('CPU'))}; the CPU can be split into logical devices "
                          "only before TensorFlow first uses it: run in a new process "
                          "(python -m edgecomp.train)") from None


def _multi_worker():
    from edgecomp._keras import tf

    read_tf_config()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:
        raise ConfigError(f"multi_worker: cannot start the strategy ({error}); it must be built before "
                          "TensorFlow runs anything else: run edgecomp.train in a new process") from None


def current():
    """The strategy ``setup`` built, or None (``strategy: none`` or no setup yet)."""
    return _built[1] if _built is not None else None


def scope():
    """``strategy.scope()`` of the current strategy; a no-op context without one."""
    strategy = current()
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def replicas() -> int:
    """Replicas that train in sync (1 without a strategy)."""
    strategy = current()
    return strategy.num_replicas_in_sync if strategy is not None else 1


def is_chief() -> bool:
    """Whether this process writes the run's files: always, except for non-chief multi_worker tasks."""
    if _built is None or _built[0].strategy != "multi_worker":
        return True
    return chief_task(read_tf_config())


def worker_dir() -> Path:
    """A temporary folder for a non-chief worker's scratch files, deleted when the process exits."""
    folder = Path(tempfile.mkdtemp(prefix="edgecomp-worker-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def dataset(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool, augment=None):
    """In-memory arrays as a ``tf.data`` dataset of global batches, sharded by data across workers.

    Every worker builds the same dataset (the shuffle seed is drawn from NumPy's
    generator, which ``keras.utils.set_random_seed`` seeds alike everywhere) and
    keeps its share of each batch (``AutoShardPolicy.DATA``). ``augment`` (an
    ``AugmentConfig``) changes each sample after shuffling (``edgecomp.augment``).
    """
    from edgecomp import augment as augmentation
    from edgecomp._keras import tf

    data = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        data = data.shuffle(len(x), seed=int(np.random.randint(0, 2**31 - 1)), reshuffle_each_iteration=True)
    if augmentation.active(augment):
        transform = augmentation.sample_transform(augment, tuple(x.shape[1:]), augmentation.training_std(x))
        data = data.map(transform)   # one call at a time: parallel calls would draw from the RNG in any order
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.batch(batch_size).with_options(options)


def fit_inputs(x_train, y_train, x_val, y_val, batch_size: int, augment=None) -> dict:
    """Keyword arguments of ``Model.fit`` for the data: arrays, or datasets under a strategy.

    Without a strategy these are the arrays themselves (the path, and the results,
    of edgecomp without ``distribute``); inside ``scope()`` they are ``dataset``s.
    With ``augment`` (``train.augment``) the training split is always a dataset whose
    samples change each epoch; validation stays as it is.
    """
    from edgecomp import augment as augmentation
    from edgecomp._keras import tf

    has_val = len(x_val) > 0
    if augmentation.active(augment) and not tf.distribute.has_strategy():
        return {"x": dataset(x_train, y_train, batch_size, shuffle=True, augment=augment).prefetch(2),
                "validation_data": (x_val, y_val) if has_val else None}
    if not tf.distribute.has_strategy():
        return {"x": x_train, "y": y_train, "validation_data": (x_val, y_val) if has_val else None,
                "batch_size": batch_size, "shuffle": True}
    return {"x": dataset(x_train, y_train, batch_size, shuffle=True, augment=augment),
            "validation_data": dataset(x_val, y_val, batch_size, shuffle=False) if has_val else None}


def check_same_everywhere(value: int, what: str, fix: str) -> None:
    """Raises on every worker when ``value`` differs between workers (a mismatch would hang training).

    Every worker takes part in two all-reduce sums (of the value and of its square):
    all values are equal exactly when sum(v²) · N = sum(v)², and every worker sees
    the same sums, so all of them stop or none does.

    Raises:
        ConfigError: naming ``what`` differs, and ``fix``.
    """
    strategy = current()
    if strategy is None or strategy.num_replicas_in_sync == 1:
        return
    from edgecomp._keras import tf

    local = tf.constant([float(value), float(value) ** 2], dtype=tf.float64)
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(local)), axis=None)
    count = float(strategy.num_replicas_in_sync)
    first, second = (float(v) for v in total.numpy())
    if second * count != first * first:
        raise ConfigError(f"distribute: the workers disagree on {what}; {fix}")
