"""Structural check of a ``.tflite`` flatbuffer in pure Python, before any interpreter sees it.

A ``.tflite`` file is a flatbuffer of TFLite's schema (identifier ``TFL3``, schema
version 3). This module walks the tables that locate everything else — the model,
its operator codes, subgraphs, tensors, operators and buffers — and checks that
every offset and vector lies inside the file, that tensor, buffer and operator-code
indices are in range, and that buffers stored after the flatbuffer (``offset`` and
``size``, used by files over 2 GB) lie inside the file. Op options, names and
quantization tables are left to the interpreter's own flatbuffer verifier.

It turns the common bad inputs (a truncated download, an empty file, some other
file renamed ``.tflite``, random bytes behind a valid header) into a ``ModelError``
that says where the file breaks, in microseconds and without native code.

Example:
    >>> from edgecomp import flatbuffer
    >>> flatbuffer.check(b"")
    Traceback (most recent call last):
    ...
    edgecomp.errors.ModelError: model is not a TFLite model: only 0 bytes
"""

from __future__ import annotations

import struct

from edgecomp.errors import ModelError

IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3
MIN_BYTES = 16

# Field numbers in TFLite's schema (schema.fbs); a field's vtable slot is 4 + 2 * number.
MODEL_VERSION, MODEL_OPERATOR_CODES, MODEL_SUBGRAPHS, MODEL_BUFFERS = 0, 1, 2, 4
SUBGRAPH_TENSORS, SUBGRAPH_INPUTS, SUBGRAPH_OUTPUTS, SUBGRAPH_OPERATORS = 0, 1, 2, 3
TENSOR_SHAPE, TENSOR_BUFFER = 0, 2
OPERATOR_OPCODE_INDEX, OPERATOR_INPUTS, OPERATOR_OUTPUTS = 0, 1, 2
BUFFER_DATA, BUFFER_OFFSET, BUFFER_SIZE = 0, 1, 2


class _File:
    """Bounds-checked reads of little-endian scalars; every failure is a ``ModelError``."""

    def __init__(self, content: bytes, where: str):
        self.content = content
        self.size = len(content)
        self.where = where

    def fail(self, what: str, hint: str = "the file is truncated or corrupt"):
        raise ModelError(f"{self.where} is not a valid TFLite model: {what}; {hint}")

    def read(self, fmt: str, position: int, what: str):
        width = struct.calcsize(fmt)
        if position < 0 or position + width > self.size:
            self.fail(f"{what} at byte {position} lies outside the file's {self.size} bytes")
        return struct.unpack_from(fmt, self.content, position)[0]

    def table(self, position: int, what: str) -> "_Table":
        vtable = position - self.read("<i", position, what)
        vtable_size = self.read("<H", vtable, f"{what}'s field table")
        table_size = self.read("<H", vtable + 2, f"{what}'s field table")
        if vtable_size < 4 or vtable_size % 2 or vtable + vtable_size > self.size:
            self.fail(f"{what}'s field table at byte {vtable} has a bad size {vtable_size}")
        if table_size < 4 or position + table_size > self.size:
            self.fail(f"{what} at byte {position} ({table_size} bytes) lies outside the file's {self.size} bytes")
        return _Table(self, position, vtable, vtable_size, table_size, what)


class _Table:
    def __init__(self, file: _File, position: int, vtable: int, vtable_size: int, table_size: int, what: str):
        self.file, self.position, self.what = file, position, what
        self.vtable, self.vtable_size, self.table_size = vtable, vtable_size, table_size

    def _field(self, number: int, width: int):
        slot = 4 + 2 * number
        if slot + 2 > self.vtable_size:
            return None
        offset = self.file.read("<H", self.vtable + slot, f"{self.what}'s field table")
        if offset == 0:
            return None
        if offset + width > self.table_size:
            self.file.fail(f"field {number} of {self.what} lies outside the table")
        return self.position + offset

    def scalar(self, number: int, fmt: str, default: int = 0) -> int:
        position = self._field(number, struct.calcsize(fmt))
        return default if position is None else self.file.read(fmt, position, f"field {number} of {self.what}")

    def vector(self, number: int, element: str, name: str) -> tuple:
        """The elements of a vector of scalars (empty when the field is absent)."""
        start, count = self._vector(number, struct.calcsize(element), name)
        return struct.unpack_from(f"<{count}{element[-1]}", self.file.content, start) if count else ()

    def tables(self, number: int, name: str) -> list["_Table"]:
        """The tables of a vector of tables (empty when the field is absent)."""
        start, count = self._vector(number, 4, name)
        tables = []
        for index in range(count):
            slot = start + 4 * index
            tables.append(self.file.table(slot + self.file.read("<I", slot, name), f"{name} {index}"))
        return tables

    def _vector(self, number: int, width: int, name: str) -> tuple[int, int]:
        position = self._field(number, 4)
        if position is None:
            return 0, 0
        vector = position + self.file.read("<I", position, name)
        count = self.file.read("<I", vector, name)
        if vector + 4 + count * width > self.file.size:
            self.file.fail(f"{name} ({count} entries at byte {vector}) run past the end of the file's "
                           f"{self.file.size} bytes")
        return vector + 4, count


def check(content: bytes, where: str = "model") -> dict:
    """Checks the structure of a ``.tflite`` flatbuffer.

    Args:
        content: the file's bytes.
        where: how to name the model in errors (its path).

    Returns:
        ``{"subgraphs", "tensors", "operators", "buffers"}`` counts.

    Raises:
        ModelError: the bytes are not a TFLite flatbuffer, or an offset, vector or
            index in it points outside the file or past the end of a list.
    """
    if len(content) < MIN_BYTES:
        raise ModelError(f"{where} is not a TFLite model: only {len(content)} bytes")
    if content[4:8] != IDENTIFIER:
        raise ModelError(
            f"{where} is not a TFLite model: file identifier {content[4:8]!r}, expected {IDENTIFIER!r}"
        )
    file = _File(content, where)
    root = file.read("<I", 0, "the root offset")
    if root + 4 > len(content):
        file.fail(f"root offset {root} beyond {len(content)} bytes")
    model = file.table(root, "the model table")
    version = model.scalar(MODEL_VERSION, "<I")
    if version != SCHEMA_VERSION:
        file.fail(f"schema version {version}, expected {SCHEMA_VERSION}",
                  "the file is corrupt or written for another schema; convert the model again")
    opcodes = model.tables(MODEL_OPERATOR_CODES, "operator code")
    buffers = _check_buffers(file, model)
    subgraphs = model.tables(MODEL_SUBGRAPHS, "subgraph")
    if not subgraphs:
        file.fail("it has no subgraph")
    counts = {"subgraphs": len(subgraphs), "tensors": 0, "operators": 0, "buffers": len(buffers)}
    for number, subgraph in enumerate(subgraphs):
        tensors, operators = _check_subgraph(file, subgraph, number, len(buffers), len(opcodes))
        counts["tensors"] += tensors
        counts["operators"] += operators
    return counts


def _check_buffers(file: _File, model: _Table) -> list[_Table]:
    """The model's buffers, each checked: its data vector, and data stored after the flatbuffer inside the file."""
    buffers = model.tables(MODEL_BUFFERS, "buffer")
    for index, buffer in enumerate(buffers):
        buffer.vector(BUFFER_DATA, "<B", f"buffer {index}'s data")
        offset, size = buffer.scalar(BUFFER_OFFSET, "<Q"), buffer.scalar(BUFFER_SIZE, "<Q")
        if offset > 1 and offset + size > file.size:
            file.fail(f"buffer {index} points at bytes {offset}..{offset + size}, beyond the file's {file.size}")
    return buffers


def _check_subgraph(file: _File, subgraph: _Table, number: int, buffers: int, opcodes: int) -> tuple[int, int]:
    """Checks subgraph ``number``'s tensors, inputs, outputs and operators; returns ``(tensors, operators)``."""
    tensors = subgraph.tables(SUBGRAPH_TENSORS, f"subgraph {number} tensor")
    for index, tensor in enumerate(tensors):
        tensor.vector(TENSOR_SHAPE, "<i", f"the shape of tensor {index}")
        buffer = tensor.scalar(TENSOR_BUFFER, "<I")
        if buffer >= max(buffers, 1):
            file.fail(f"tensor {index} of subgraph {number} uses buffer {buffer}; there are {buffers}")
    for field, name in ((SUBGRAPH_INPUTS, "inputs"), (SUBGRAPH_OUTPUTS, "outputs")):
        indices = subgraph.vector(field, "<i", f"the {name} of subgraph {number}")
        _check_indices(file, indices, len(tensors), f"the {name} of subgraph {number}", allow_absent=False)
        if number == 0 and not indices:
            file.fail(f"its main subgraph has no {name}", "edgecomp runs models with at least one input and output")
    operators = subgraph.tables(SUBGRAPH_OPERATORS, f"subgraph {number} operator")
    for index, operator in enumerate(operators):
        opcode = operator.scalar(OPERATOR_OPCODE_INDEX, "<I")
        if opcode >= opcodes:
            file.fail(f"operator {index} of subgraph {number} uses operator code {opcode}; "
                      f"there are {opcodes}")
        for field, name in ((OPERATOR_INPUTS, "inputs"), (OPERATOR_OUTPUTS, "outputs")):
            indices = operator.vector(field, "<i", f"the {name} of operator {index}")
            _check_indices(file, indices, len(tensors), f"the {name} of operator {index} of subgraph {number}",
                           allow_absent=True)
    return len(tensors), len(operators)


def _check_indices(file: _File, indices, tensors: int, what: str, allow_absent: bool) -> None:
    lowest = -1 if allow_absent else 0  # -1 marks an optional operator input that is absent
    bad = [index for index in indices if not lowest <= index < tensors]
    if bad:
        file.fail(f"{what} name tensor {bad[0]}; there are {tensors} tensors")
