"""Trials of the recipe search: one candidate's run config in, its report out, here or on a Ray cluster.

A trial is independent of every other: it gets its run config and the baseline
checkpoint's files, runs the ordinary pipeline, and returns ``report.json``'s data
(and, on Ray, the run folder's files, so the nodes need no shared filesystem).

Example:
    >>> backend = open_backend("local", Path("models/search/runs"))          # doctest: +SKIP
    >>> backend.run([config.to_dict(cfg)], baseline_files)                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Optional

from edgecomp import checkpoints, config, files
from edgecomp.config import ConfigError
from edgecomp.errors import EdgecompError

log = logging.getLogger("edgecomp")


def run_trial(raw_config: dict, baseline: dict[str, bytes], output_dir: Optional[str] = None,
              resume: bool = False) -> dict:
    """Runs one candidate: its config in, its report out. The function a Ray task runs.

    Args:
        raw_config: the candidate's run config as plain data.
        baseline: the baseline checkpoint's files (name → bytes), reused instead of retraining.
        output_dir: where the run folder goes; None: a temporary folder, whose files
            (all but the checkpoints) come back in the result.
        resume: reuse the run folder's finished stages.

    Returns:
        ``{"report": report.json's data, "files": {relative path: bytes}, "seconds": s}``,
        or ``{"error": message}`` when the run failed.
    """
    from edgecomp import pipeline

    if not logging.getLogger().handlers:   # a Ray worker: show the trial's progress on the driver
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
        log.setLevel(logging.INFO)
    started = time.time()
    scratch = None
    if output_dir is None:
        scratch = tempfile.mkdtemp(prefix="edgecomp-trial-")
        output_dir = scratch
    try:
        cfg = config.from_dict({**raw_config, "output_dir": output_dir}, source=f"trial {raw_config.get('name')}")
        # Always this search's baseline: a folder left by an earlier search may hold another one.
        files.write_dir(checkpoints.baseline_folder(cfg.run_dir), baseline)
        try:
            report = pipeline.run(cfg, resume=True)
        except EdgecompError as error:
            return {"error": str(error), "seconds": time.time() - started}
        outputs = {}
        if scratch is not None:
            for path in sorted(cfg.run_dir.rglob("*")):
                relative = path.relative_to(cfg.run_dir)
                if path.is_file() and relative.parts[0] != checkpoints.FOLDER:
                    outputs[str(relative)] = path.read_bytes()
        return {"report": report.to_dict(), "files": outputs, "seconds": time.time() - started}
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


class LocalBackend:
    """Trials one after another in this process, each in its run folder."""

    name = "local"

    def __init__(self, runs_dir: Path):
        self.runs_dir = runs_dir

    def run(self, configs: list[dict], baseline: dict[str, bytes]) -> list[dict]:
        """Runs one trial per raw run config, all from ``baseline``; results in the same order."""
        results = []
        for raw in configs:
            try:
                results.append(run_trial(raw, baseline, str(self.runs_dir)))
            except Exception as error:  # noqa: BLE001 - one broken candidate must not end the search (Ray: same)
                log.exception("search: trial %s crashed", raw.get("name"))
                results.append({"error": f"{type(error).__name__}: {error}"})
        return results

    def close(self) -> None:
        """Nothing to release."""


class RayBackend:
    """Trials as Ray tasks on an existing cluster (``address``) or on one started here.

    Every node needs the same edgecomp installed (``pip install 'edgecomp[ray]'``); a trial
    carries its config and the baseline checkpoint, and returns its report and files,
    which are written into this machine's run folder.
    """

    name = "ray"

    def __init__(self, runs_dir: Path, address: Optional[str], cpus_per_trial: float):
        try:
            import ray
        except ImportError:
            raise ConfigError("search.backend: ray needs the ray package; install it with "
                              "pip install 'edgecomp[ray]', or use backend: local") from None
        self.ray = ray
        self.runs_dir = runs_dir
        self.started_here = address is None
        reachable(address)
        try:
            if address is None:
                ray.init(num_cpus=None, include_dashboard=False, object_store_memory=256 * 1024 * 1024,
                         log_to_driver=True, ignore_reinit_error=True)
            else:
                ray.init(address=address, log_to_driver=True, ignore_reinit_error=True)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise EdgecompError(f"search.address: cannot connect to the Ray cluster at {address!r}: "
                                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}; "
                                "if the cluster uses token authentication (Ray's default since 2.5x), set "
                                "RAY_AUTH_MODE=token and the cluster's token (~/.ray/auth_token or RAY_AUTH_TOKEN)"
                                ) from None
        self.task = ray.remote(num_cpus=cpus_per_trial, max_retries=0)(run_trial)
        log.info("search: Ray cluster with %s CPUs", ray.cluster_resources().get("CPU"))

    def run(self, configs: list[dict], baseline: dict[str, bytes]) -> list[dict]:
        """Submits every trial at once (the baseline stored once); waits for all; writes their files here."""
        shared = self.ray.put(baseline)
        futures = [self.task.remote(raw, shared) for raw in configs]
        results = []
        for raw, future in zip(configs, futures):
            try:
                result = self.ray.get(future)
            except self.ray.exceptions.RayError as error:
                result = {"error": f"the Ray task failed: {str(error).strip().splitlines()[-1]}"}
            folder = self.runs_dir / raw["name"]
            for relative, content in (result.get("files") or {}).items():
                files.write_bytes(folder / relative, content)
            result.pop("files", None)
            results.append(result)
        return results

    def close(self) -> None:
        """Disconnects (and stops the Ray instance when this process started it)."""
        self.ray.shutdown()


def reachable(address: Optional[str]) -> None:
    """Refuses at once a ``host:port`` where nothing listens (``ray.init`` would retry for minutes)."""
    if address is None or address == "auto":
        return
    where = address.split("://", 1)[-1]
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"search.address: {address!r} is not host:port (or ray://host:port, or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as error:
        raise EdgecompError(f"search.address: cannot connect to the Ray cluster at {address!r}: "
                            f"{error.strerror or error}; start it with `ray start --head`, or leave address "
                            "out to start one here") from None


def open_backend(kind: str, runs_dir: Path, address: Optional[str] = None, cpus_per_trial: float = 1.0):
    """The backend ``search.backend`` names: ``local`` or ``ray``."""
    if kind == "ray":
        return RayBackend(runs_dir, address, cpus_per_trial)
    return LocalBackend(runs_dir)
