"""TensorFlow's C++ log lines stay off the console; everything else written to stderr survives."""

import os
import subprocess
import sys

import pytest

BLOCK = """
import os, sys
from edgecomp.native_logs import quiet
with quiet():
    os.write(2, b"I0000 00:00:1796315219.066148   23676 port.cc:153] oneDNN custom operations are on.\\n")
    os.write(2, b"fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32\\n")
    os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
    print("a line of edgecomp's own", file=sys.stderr)
    if len(sys.argv) > 1:
        raise SystemExit("failed inside")
"""


def run(*arguments, verbose=False):
    env = dict(os.environ, EDGECOMP_VERBOSE="1" if verbose else "0")
    return subprocess.run([sys.executable, "-c", BLOCK, *arguments], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def test_native_log_lines_are_dropped_and_other_lines_kept():
    assert run().stderr == "a line of edgecomp's own\n"


@pytest.mark.parametrize("arguments, verbose", [(("fail",), False), ((), True)])
def test_everything_is_shown_when_the_block_fails_or_edgecomp_verbose_is_set(arguments, verbose):
    stderr = run(*arguments, verbose=verbose).stderr
    assert "oneDNN custom operations" in stderr and "fully_quantize" in stderr and "edgecomp's own" in stderr
