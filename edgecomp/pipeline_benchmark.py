"""Timing a run's files on the configured benchmark devices, and rule ``outputs_on_<device>``.

``benchmark`` runs a file on every device of ``benchmark.devices`` at every thread
count; ``output_rule`` records whether a device computed what this machine does
on the first ``CHECKED_SAMPLES`` test samples.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgecomp.config import Config
from edgecomp.devices import open_configured, output_check
from edgecomp.errors import DeviceError, EdgecompError
from edgecomp.report import TargetRecord

log = logging.getLogger("edgecomp")
CHECKED_SAMPLES = 8   # test samples whose outputs every benchmarked device must reproduce


def benchmark(cfg: Config, path: Path, samples: np.ndarray, record: TargetRecord) -> list[dict]:
    """Benchmarks ``path`` on every configured device, timing the first sample; checks the device's outputs.

    Devices that run edgecomp's agent (local, ssh) return the outputs of ``samples``;
    they are compared with this machine's run of the same file (``output_check``),
    and a device that computes something else fails rule ``outputs_on_<device>``.
    """
    results, expected = [], None
    for spec in cfg.benchmark.devices:
        try:
            device = open_configured(spec, cfg.benchmark)
        except DeviceError as error:
            raise EdgecompError(f"benchmark.devices: {error}") from None
        for threads in cfg.benchmark.threads:
            log.info("%s: benchmarking on %s, %d thread(s), %d runs", record.target, spec, threads, cfg.benchmark.runs)
            try:
                result = device.benchmark(path, runs=cfg.benchmark.runs, warmup=cfg.benchmark.warmup,
                                          threads=threads, inputs=samples, timeout_s=cfg.benchmark.timeout_s)
            except DeviceError as error:
                log.error("%s: %s", record.target, error)
                record.skipped.append({"layer": f"benchmark {spec}", "reason": str(error)})
                continue
            if "outputs" in result:
                if expected is None:
                    expected = output_check.reference(path.read_bytes(), samples)
                result["output_check"] = check = output_check.compare(result.pop("outputs"), expected)
            else:
                result["output_check"] = check = {"verdict": "not checked",
                                                  "reason": "this device's benchmark returns no outputs"}
            if check["verdict"] != "not checked":
                output_rule(record, spec, threads, check)
            latency = result["latency_ms"]
            which = "p50" if latency.get("p50") is not None else "mean"
            log.info("%s: %s %.4f ms on %s (%s)", record.target, which, latency[which], spec, result["delegate"])
            results.append(result)
    return results


def output_rule(record: TargetRecord, spec: str, threads: int, check: dict) -> None:
    """Rule ``outputs_on_<device>``: the device computed what this machine does (within tolerance).

    Only ``wrong`` (a top class changed) fails; ``differs`` (beyond tolerance, same classes) is a warning.
    """
    ok = check["verdict"] != "wrong"
    name = f"outputs_on_{spec.split('://')[0]}"
    detail = f"{spec}, {threads} thread(s): {output_check.describe(check)}"
    (log.error if not ok else log.warning if check["verdict"] == "differs" else log.info)("%s: %s", record.target,
                                                                                       detail)
    details = record.compatibility.setdefault("details", {})
    details.setdefault("rules", []).append({"rule": name, "ok": ok, "detail": detail})
    record.compatibility["ok"] = bool(record.compatibility.get("ok", True)) and ok
