"""The graph reader the target checkers share: LiteRT's schema, no TensorFlow."""

import subprocess
import sys

from edgecomp import graph


def test_reading_a_graph_does_not_import_tensorflow(converted, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(converted("int8"))
    code = ("import sys; from edgecomp import graph; "
            f"operators, tensors, inputs, outputs = graph.read_model(open({str(path)!r}, 'rb').read()); "
            "print(len(operators), 'tensorflow' in sys.modules, 'tf_keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, tensorflow, tf_keras = done.stdout.split()
    assert int(count) > 0 and tensorflow == "False" and tf_keras == "False"


def test_macs_of_a_conv_count_every_output_value_times_its_kernel_window(converted):
    operators, tensors, _, _ = graph.read_model(converted("int8"))
    conv = next(op for op in operators if op.name == "CONV_2D")
    out_channels, kernel_h, kernel_w, in_channels = tensors[conv.inputs[1]].shape
    _, height, width, channels = tensors[conv.outputs[0]].shape
    assert channels == out_channels
    assert graph.macs(conv, tensors) == height * width * out_channels * kernel_h * kernel_w * in_channels
    assert all(graph.macs(op, tensors) == 0 for op in operators if op.name not in graph.PARAMETER_INPUTS)
