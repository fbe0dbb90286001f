"""The ``local`` device: the benchmark agent in a child process of this Python.

A crash inside the runtime (a bad model can segfault it) ends the child, never the
caller: it comes back as a ``DeviceError`` naming the signal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from edgecomp.errors import DeviceError
from edgecomp.progress import Ticker

AGENT = Path(__file__).with_name("agent.py")


@dataclasses.dataclass(frozen=True)
class LocalDevice:
    """Runs ``agent.py`` with this interpreter (``sys.executable``)."""

    name: str = "local"
    xnnpack: bool = True

    def benchmark(
        self,
        model_path: str | Path,
        *,
        runs: int = 100,
        warmup: int = 10,
        threads: int = 1,
        inputs: Optional[np.ndarray] = None,
        timeout_s: float = 600.0,
    ) -> dict:
        """Benchmarks one ``.tflite``; returns the agent's record plus ``device``.

        Args:
            model_path: the file to run.
            runs: timed invocations.
            warmup: untimed invocations before timing.
            threads: interpreter threads.
            inputs: samples to feed (quantized by the agent if the input is integer);
                random inputs of the right type when None.
            timeout_s: the whole benchmark's time limit.

        Raises:
            DeviceError: the agent failed, crashed or timed out; the message says which.
        """
        with tempfile.TemporaryDirectory(prefix="edgecomp-bench-") as folder:
            command = [
                sys.executable, "-X", "faulthandler", str(AGENT), "--model", str(model_path),
                "--runs", str(runs), "--warmup", str(warmup), "--threads", str(threads),
            ]
            if not self.xnnpack:
                command.append("--no-xnnpack")
            if inputs is not None:
                inputs_path = os.path.join(folder, "inputs.npy")
                np.save(inputs_path, np.asarray(inputs, dtype=np.float32))
                command += ["--inputs", inputs_path]
            try:
                with Ticker(f"benchmarking {Path(model_path).name} on {self.name} ({runs} runs)"):
                    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
            except subprocess.TimeoutExpired:
                raise DeviceError(
                    f"local benchmark of {model_path} did not finish in {timeout_s:.0f} s; "
                    "lower benchmark.runs or raise benchmark.timeout_s"
                ) from None
        if done.returncode < 0:
            name = signal.Signals(-done.returncode).name
            raise DeviceError(f"the TFLite runtime crashed ({name}) running {model_path}; its stderr ended: "
                              f"{stderr_tail(done.stderr)}")
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise DeviceError(f"local benchmark of {model_path} failed: {tail}")
        try:
            record = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise DeviceError(f"local benchmark of {model_path} printed no result") from None
        return {"device": self.name, **record}


def stderr_tail(text: str, lines: int = 4) -> str:
    """The last lines of a process's stderr on one line, or "nothing"."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) if kept else "nothing"
