"""The per-file timer the filter-pruning and layer benchmarks share.

``tools/bench_filter_pruning.py`` imports it from beside itself; ``experiments/bench_low_rank.py``
as ``tools.invoke_timer`` (run from the repository root).

The timing loop itself is the agent's (``edgecomp.devices.agent.time_invokes``), the
one the local and ssh devices run.
"""

import statistics

import numpy as np

from edgecomp import runtime
from edgecomp.devices.agent import time_invokes


def timer(content: bytes, sample: np.ndarray, invokes: int, threads: int = 1, warmup: int = 10,
          xnnpack: bool = True):
    """A function returning the median of ``invokes`` timed ``invoke()`` calls on ``content``, in ms.

    The interpreter is built once (XNNPACK unless ``xnnpack`` is false: LiteRT's builtin
    kernels, ``threads``), fed ``sample`` (quantized when the input is integer) and warmed
    up ``warmup`` times.
    """
    interpreter = runtime.make_interpreter(content, num_threads=threads, delegates=xnnpack)
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], runtime.quantize_input(sample, detail))
    for _ in range(warmup):
        interpreter.invoke()
    return lambda: statistics.median(time_invokes(interpreter.invoke, invokes)) * 1000
