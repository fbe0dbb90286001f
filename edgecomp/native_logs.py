"""TensorFlow's C++ log lines, kept off the console unless asked for.

TensorFlow 2.21 writes to file descriptor 2 from C++ when it is imported (oneDNN,
CUDA stubs, ``cuInit`` at E level on a machine without a GPU) and when the TFLite
converter runs (``fully_quantize: 0, ...``); ``TF_CPP_MIN_LOG_LEVEL`` no longer
silences all of it. ``quiet()`` points descriptor 2 at a temporary file for a block,
then writes back every line that is not such a log line, so edgecomp's own messages
and any real error survive; when the block raises, everything captured is written
back. ``EDGECOMP_VERBOSE=1`` turns it off.

Example:
    >>> with quiet():
    ...     import tensorflow as tf                                   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# absl/glog C++ lines ("I0000 00:00:1796... 123 port.cc:153] ..."), absl's pre-init notice, the MLIR
# converter's quantization summary, LiteRT's delegate notice.
NATIVE_LINE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:[\d.]+\s+\d+ \S+:\d+\]|WARNING: All log messages before absl::"
                         r"InitializeLog\(\)|fully_quantize: \d|INFO: Created TensorFlow Lite \w+ delegate for)")


def verbose() -> bool:
    """Whether the user asked to see TensorFlow's C++ logs (``EDGECOMP_VERBOSE=1``)."""
    return os.environ.get("EDGECOMP_VERBOSE", "") == "1"


@contextlib.contextmanager
def quiet():
    """Within the block, C/C++ writes to stderr are held back; all but TensorFlow's log lines are written after."""
    if verbose():
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:          # no descriptor 2 (a daemon): nothing to quiet
        yield
        return
    failed = False
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace")
            kept = text if failed else "".join(line for line in text.splitlines(keepends=True)
                                                 if not NATIVE_LINE.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
