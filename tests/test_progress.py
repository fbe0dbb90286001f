"""Progress for long steps: a redrawn line on a terminal, a periodic log line otherwise."""

import io
import logging
import time

from edgecomp.progress import Ticker


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_redraws_one_line_on_a_terminal_and_erases_it():
    terminal = Terminal()
    with Ticker("benchmarking m.tflite on local (100 runs)", stream=terminal, delay_s=0.01, refresh_s=0.01):
        time.sleep(0.15)
    text = terminal.getvalue()
    assert "\rbenchmarking m.tflite on local (100 runs): 0 s" in text
    assert "\n" not in text and text.endswith("\r") and text.rstrip("\r").endswith(" ")


def test_progress_logs_every_n_seconds_when_not_a_terminal(caplog):
    log_file = io.StringIO()
    with caplog.at_level(logging.INFO, logger="edgecomp.progress"):
        with Ticker("adb://R58M123: benchmark_model on m.tflite", stream=log_file, log_every_s=0.03):
            time.sleep(0.2)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) >= 2 and all("still running after" in message for message in messages)
    assert log_file.getvalue() == ""


def test_progress_is_silent_for_short_steps(caplog):
    terminal = Terminal()
    with caplog.at_level(logging.INFO, logger="edgecomp.progress"):
        with Ticker("quick", stream=terminal, delay_s=1.0, log_every_s=1.0):
            pass
    assert terminal.getvalue() == "" and caplog.records == []
