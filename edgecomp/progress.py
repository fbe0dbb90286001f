"""Shows that a long step is still running, without touching the step itself.

On a terminal, a line on stderr counts the seconds (redrawn in place, erased at the
end); otherwise, one log line every ``log_every_s`` seconds. Short steps show
nothing. The ticking happens in a background thread, so a benchmark's timing loop
(in a child process or on a device) is untouched.

Example:
    >>> with Ticker("benchmarking model.tflite on local (100 runs)"):
    ...     run_the_benchmark()                                  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Optional, TextIO

log = logging.getLogger("edgecomp.progress")


class Ticker:
    """Context manager: elapsed seconds on a terminal, a periodic log line otherwise.

    Args:
        label: what is running, e.g. ``"ssh://pi@board: model.tflite (100 runs)"``.
        stream: where the terminal line goes (``sys.stderr`` when None, looked up on entry).
        delay_s: nothing is shown for steps shorter than this (terminal).
        refresh_s: how often the terminal line is redrawn.
        log_every_s: seconds between log lines when the stream is not a terminal.
    """

    def __init__(self, label: str, *, stream: Optional[TextIO] = None, delay_s: float = 2.0,
                 refresh_s: float = 0.5, log_every_s: float = 30.0):
        self.label = label
        self.stream = stream
        self.delay_s = delay_s
        self.refresh_s = refresh_s
        self.log_every_s = log_every_s
        self._stop = threading.Event()
        self._width = 0

    def __enter__(self) -> "Ticker":
        self._out = self.stream if self.stream is not None else sys.stderr
        isatty = getattr(self._out, "isatty", None)
        self._terminal = bool(isatty and isatty())
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._tick, name="edgecomp-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        self._thread.join()
        if self._width:
            self._out.write("\r" + " " * self._width + "\r")
            self._out.flush()
        return False

    def _tick(self) -> None:
        first_wait = self.delay_s if self._terminal else self.log_every_s
        if self._stop.wait(first_wait):
            return
        while True:
            elapsed = time.monotonic() - self._start
            if self._terminal:
                line = f"{self.label}: {elapsed:.0f} s"
                self._out.write("\r" + line.ljust(self._width))
                self._out.flush()
                self._width = max(self._width, len(line))
            else:
                log.info("%s: still running after %.0f s", self.label, elapsed)
            if self._stop.wait(self.refresh_s if self._terminal else self.log_every_s):
                return
