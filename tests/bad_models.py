"""Bad ``.tflite`` files made from a valid one: each kind of damage a user's file can have.

``variants(valid_float32, valid_int8)`` returns ``{name: bytes}`` for every name in
``KINDS``; every entry must be
refused with a ``ModelError`` by every path that loads a model, and none may crash
the process that checks it.
"""

import io
import random
import struct
import zipfile

CRASH_ZERO_POINT = 6722000332135595904  # found by fuzzing: LiteRT 2.3's XNNPACK segfaults on it


def _edit(content: bytes, change) -> bytes:
    """Applies ``change(model_object)`` through TensorFlow's flatbuffer object API."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    change(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _first_weight_buffer(model) -> int:
    return next(index for index, buffer in enumerate(model.buffers) if buffer.data is not None and len(buffer.data) > 64)


def external_buffer_beyond_the_file(content: bytes) -> bytes:
    def change(model):
        buffer = model.buffers[_first_weight_buffer(model)]
        buffer.offset, buffer.size, buffer.data = 1 << 40, 4096, None

    return _edit(content, change)


def weight_buffer_shorter_than_its_tensor(content: bytes) -> bytes:
    def change(model):
        buffer = model.buffers[_first_weight_buffer(model)]
        buffer.data = buffer.data[: len(buffer.data) // 2]

    return _edit(content, change)


def tensor_pointing_at_a_missing_buffer(content: bytes) -> bytes:
    def change(model):
        model.subgraphs[0].tensors[0].buffer = len(model.buffers) + 7

    return _edit(content, change)


def operator_input_out_of_range(content: bytes) -> bytes:
    def change(model):
        model.subgraphs[0].operators[0].inputs[0] = len(model.subgraphs[0].tensors) + 3

    return _edit(content, change)


def wrong_schema_version(content: bytes) -> bytes:
    def change(model):
        model.version = 2

    return _edit(content, change)


def op_versions_unknown(content: bytes) -> bytes:
    """Every operator code at version 99: no runtime has kernels for it (not in ``KINDS``: TFLM ignores versions)."""
    def change(model):
        for code in model.operatorCodes:
            code.version = 99

    return _edit(content, change)


def no_inputs(content: bytes) -> bytes:
    def change(model):
        model.subgraphs[0].inputs = []

    return _edit(content, change)


def zero_point_that_crashes_xnnpack(int8_content: bytes) -> bytes:
    """The int8 input QUANTIZE's output zero point overwritten (what the fuzzer found)."""
    from tensorflow.lite.tools import flatbuffer_utils

    def change(model):
        graph = model.subgraphs[0]
        quantize = next(op for op in graph.operators
                        if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "QUANTIZE")
        graph.tensors[quantize.outputs[0]].quantization.zeroPoint = [CRASH_ZERO_POINT]

    return _edit(int8_content, change)


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("config.json", '{"class_name": "Functional"}')
    return buffer.getvalue()


_RANDOM = bytes(random.Random(0).randrange(256) for _ in range(2048))

# name → make(valid float32 bytes, valid int8 bytes) → bad bytes
KINDS = {
    "zero-length": lambda f, i: b"",
    "seven bytes": lambda f, i: f[:7],
    "truncated to a quarter": lambda f, i: f[: len(f) // 4],
    "truncated to a half": lambda f, i: f[: len(f) // 2],
    "truncated by one byte": lambda f, i: f[:-1],
    "random bytes": lambda f, i: _RANDOM,
    "random bytes behind a TFL3 header": lambda f, i: struct.pack("<I", 16) + b"TFL3" + _RANDOM,
    "text file": lambda f, i: b"hello world, this is not a model at all\n" * 4,
    "json file": lambda f, i: b'{"model": "digits_cnn", "layers": [1, 2, 3]}',
    "png header": lambda f, i: b"\x89PNG\r\n\x1a\n" + bytes(64),
    "keras zip": lambda f, i: _zip_bytes(),
    "hdf5 header": lambda f, i: b"\x89HDF\r\n\x1a\n" + bytes(120),
    "external buffer beyond the file": lambda f, i: external_buffer_beyond_the_file(f),
    "weight buffer shorter than its tensor": lambda f, i: weight_buffer_shorter_than_its_tensor(f),
    "tensor pointing at a missing buffer": lambda f, i: tensor_pointing_at_a_missing_buffer(f),
    "operator input out of range": lambda f, i: operator_input_out_of_range(f),
    "schema version 2": lambda f, i: wrong_schema_version(f),
    "no inputs": lambda f, i: no_inputs(f),
    "zero point that crashes XNNPACK": lambda f, i: zero_point_that_crashes_xnnpack(i),
}


def variants(float32: bytes, int8: bytes) -> dict[str, bytes]:
    """Every kind of bad ``.tflite``, by name."""
    return {name: make(float32, int8) for name, make in KINDS.items()}
