"""Stage checkpoints: where a run keeps them, and the ``Checkpoints`` that saves and reuses them.

A run folder holds one checkpoint folder per finished stage,
``<run_dir>/checkpoints/<index>_<kind>/`` (``00_baseline``, ``01_prune``, ...), each with
the model (``model.h5``) and its record and fingerprint (``record.json``). The study and
the recipe search copy the baseline's folder into other runs, whose ``--resume`` then
reuses it; the path functions below are the one place that spells the layout.

Importing this module does not import TensorFlow (loading and saving a model does).

Example:
    >>> from pathlib import Path
    >>> from edgecomp import checkpoints
    >>> checkpoints.baseline_file(Path("models/quickstart"))
    PosixPath('models/quickstart/checkpoints/00_baseline/model.h5')
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from edgecomp import config as config_module
from edgecomp import distribute, files
from edgecomp.config import Config
from edgecomp.report import StageRecord

log = logging.getLogger("edgecomp")

FOLDER = "checkpoints"   # under the run folder
# HDF5: the one tf_keras format that reloads models with tfmot quantize wrappers
# (the .keras format loses the wrappers' variables: "expected 5 variables, received 3").
CHECKPOINT_FILE = "model.h5"
RECORD_FILE = "record.json"   # the stage's record and the fingerprint that says whether it is still valid


def folder(run_dir: Path) -> Path:
    """``<run_dir>/checkpoints``: every stage checkpoint of a run."""
    return Path(run_dir) / FOLDER


def stage_name(index: int, kind: str) -> str:
    """A checkpoint folder's name: ``00_baseline`` for the baseline, ``01_prune`` for a first stage prune."""
    return f"{index:02d}_{kind}"


def stage_folder(run_dir: Path, index: int, kind: str) -> Path:
    """The checkpoint folder of stage ``index`` (0: the baseline) of kind ``kind``."""
    return folder(run_dir) / stage_name(index, kind)


def stage_file(run_dir: Path, index: int, kind: str) -> Path:
    """The model file of stage ``index``'s checkpoint."""
    return stage_folder(run_dir, index, kind) / CHECKPOINT_FILE


def baseline_folder(run_dir: Path) -> Path:
    """``<run_dir>/checkpoints/00_baseline``: the trained baseline, which studies and searches share."""
    return stage_folder(run_dir, 0, "baseline")


def baseline_file(run_dir: Path) -> Path:
    """The baseline checkpoint's model file."""
    return baseline_folder(run_dir) / CHECKPOINT_FILE


class Checkpoints:
    """One saved model per finished stage, reused by ``--resume`` when still valid.

    A checkpoint is valid when its fingerprint equals the current one: a hash of seed,
    data, model, train and the stages up to it, and (after the baseline) of the content
    of the checkpoint the stage started from, the SHA-256 of the previous stage's
    ``model.h5``. A stage's checkpoint is reused only when the one before it was reused
    too. So changing a later stage or a target reuses the earlier work, while changing
    anything upstream, or an earlier checkpoint made again (it would not load, it was
    deleted, another baseline was copied in), makes every later stage run again.
    Checkpoints load through ``models.load``: one that holds stored code (a ``Lambda``
    layer) is refused unless ``model.trust`` is set.
    """

    def __init__(self, folder: Path, cfg: Config, resume: bool):
        self.folder = folder
        self.config = config_module.to_dict(cfg)
        self.resume = resume
        self.trust = cfg.model.trust
        self._contents: dict[int, str] = {}   # index -> SHA-256 of the model.h5 this run loaded or saved
        self._reused: set[int] = set()        # the checkpoints this run loaded

    def fingerprint(self, index: int, started_from: str | None = None) -> str:
        """The hash a valid checkpoint ``index`` records.

        Args:
            index: 0 for the baseline, i for the i-th stage.
            started_from: SHA-256 of checkpoint ``index - 1``'s model file; default: the
                one this run loaded or saved (None when it did neither: matches nothing).
        """
        upstream = {key: self.config[key] for key in ("seed", "data", "model", "train")}
        if upstream["train"].get("augment") is None:   # without augment: the fingerprints of earlier versions
            upstream["train"] = {k: v for k, v in upstream["train"].items() if k != "augment"}
        upstream["stages"] = self.config["stages"][:index]
        if index > 0:
            upstream["started_from"] = started_from or self._contents.get(index - 1)
        return hashlib.sha256(json.dumps(upstream, sort_keys=True).encode()).hexdigest()

    def _dir(self, index: int, kind: str) -> Path:
        return self.folder / stage_name(index, kind)

    def usable(self, stages: int) -> int:
        """What resuming reuses, as bits: bit i (0: baseline) when checkpoints 0 to i are all valid.

        Checkpoint i is valid for this config on top of checkpoint i - 1 as it is on disk.
        """
        bits = 0
        for index in range(stages + 1):
            found = sorted(self.folder.glob(f"{index:02d}_*/{RECORD_FILE}")) if self.folder.is_dir() else []
            if not found or (index > 0 and not bits >> (index - 1) & 1):
                break
            try:
                started_from = self._content_on_disk(index - 1) if index else None
                same = json.loads(found[0].read_text()).get("fingerprint") == self.fingerprint(index, started_from)
            except (OSError, ValueError, AttributeError):
                same = False
            bits |= int(same) << index
        return bits

    def _content_on_disk(self, index: int) -> str | None:
        """SHA-256 of checkpoint ``index``'s model file as it is on disk, or None when there is none."""
        found = sorted(self.folder.glob(f"{index:02d}_*/{CHECKPOINT_FILE}"))
        return hashlib.sha256(found[0].read_bytes()).hexdigest() if found else None

    def load(self, index: int, kind: str):
        """``(model, record)`` of a valid checkpoint when resuming, else ``(None, None)``."""
        folder = self._dir(index, kind)
        if not self.resume or not (folder / RECORD_FILE).exists():
            return None, None
        if index > 0 and index - 1 not in self._reused:
            log.info("resume: %s follows a stage this run made again; running it again too", folder.name)
            return None, None
        try:
            saved = json.loads((folder / RECORD_FILE).read_text())
            same = isinstance(saved, dict) and saved.get("fingerprint") == self.fingerprint(index)
        except (OSError, ValueError) as error:
            log.warning("resume: cannot read %s/record.json (%s); running the stage again", folder.name, error)
            return None, None
        if not same:
            log.info("resume: %s checkpoint is from a different config or an earlier checkpoint made again; "
                     "running it again", folder.name)
            return None, None
        from edgecomp import models   # imports TensorFlow

        try:
            content = (folder / CHECKPOINT_FILE).read_bytes()
            # Checked by content like any model file: stored code runs only with model.trust.
            model = models.load(folder / CHECKPOINT_FILE, trust=self.trust, where=f"checkpoint {folder.name}")
            record = StageRecord(**saved["record"])
        except Exception as error:  # noqa: BLE001 - a checkpoint that will not load (or is refused) is re-made
            log.warning("resume: cannot load %s (%s); running the stage again", folder.name, error)
            return None, None
        self._contents[index] = hashlib.sha256(content).hexdigest()
        self._reused.add(index)
        log.info("resume: reusing checkpoint %s", folder.name)
        return model, record

    def save(self, index: int, kind: str, model, record: StageRecord) -> None:
        """Saves atomically: a temporary folder renamed into place when complete (on the chief only)."""
        if not distribute.is_chief():
            return
        from edgecomp import models   # imports TensorFlow

        # The HDF5 file is built in memory: h5py crashes the process when its disk fills up.
        content = models.to_h5_bytes(model)
        payload = {"fingerprint": self.fingerprint(index), "record": record.__dict__}
        files.write_dir(self._dir(index, kind), {
            CHECKPOINT_FILE: content,
            RECORD_FILE: json.dumps(payload, indent=2, default=float).encode(),
        })
        self._contents[index] = hashlib.sha256(content).hexdigest()
