"""Child process of ``gpu.run_on_gpu``: runs a ``.tflite`` on LiteRT's GPU accelerator.

Usage: ``python -m edgecomp.targets.gpu_worker MODEL INPUTS.npy OUTPUTS.npy ELEMENTS``
(``ELEMENTS``: values in the first output of one sample). Prints one JSON line:
``{"ran": true, "fully_accelerated": ...}`` after writing the first output of every
sample, or ``{"ran": false, "reason": ...}``. The accelerator logs to stderr, which
the parent reads for the reason when it fails (no GPU, no Vulkan, ...).
"""

from __future__ import annotations

import json
import sys

import numpy as np


def main(model_path: str, inputs_path: str, outputs_path: str, elements: str) -> dict:
    """Runs every sample of ``inputs_path`` through the model on the GPU accelerator."""
    try:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    except ImportError as error:
        return {"ran": False, "reason": f"ai-edge-litert has no CompiledModel API here ({error})"}
    try:
        model = CompiledModel.from_file(model_path, hardware_accel=HardwareAccelerator.GPU)
    except Exception as error:  # noqa: BLE001 - any failure to start the accelerator is the answer
        return {"ran": False, "reason": f"the GPU accelerator did not start ({str(error).splitlines()[0][:200]})"}
    samples = np.load(inputs_path)
    results = []
    for sample in samples:
        inputs, outputs = model.create_input_buffers(0), model.create_output_buffers(0)
        inputs[0].write(np.ascontiguousarray(sample[None], np.float32))
        model.run_by_index(0, inputs, outputs)
        results.append(np.asarray(outputs[0].read(int(elements), np.float32)).reshape(-1))
    np.save(outputs_path, np.stack(results))
    return {"ran": True, "fully_accelerated": bool(model.is_fully_accelerated()), "samples": len(samples)}


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: python -m edgecomp.targets.gpu_worker MODEL INPUTS.npy OUTPUTS.npy ELEMENTS")
    print(json.dumps(main(*sys.argv[1:])))
