"""TFLite model metadata: labels, input normalization and a description inside the ``.tflite``.

Android's Task Library and ML Model Binding, the metadata extractor and Netron read
it: the labels of the output axis, how to normalize an input (``(x - mean) / std``
per channel), whether the input is an image (gray or RGB) and what the file is.

The metadata follows TensorFlow Lite's official metadata schema
(``metadata_schema.fbs`` of tflite-support, file identifier ``M001``, only fields of
schema version 1.0.0) and is stored the way tflite-support's ``MetadataPopulator``
stores it: a ``TFLITE_METADATA`` entry of the model pointing at a buffer that holds
the ``ModelMetadata`` flatbuffer, and the label file packed as an uncompressed zip
appended to the model (an "associated file"). It is written here with the
``flatbuffers`` builder because tflite-support 0.4.4, the last release, needs
protobuf < 4 and cannot be installed beside TensorFlow 2.21. The tests read every
file written here back with tflite-support itself, in a separate environment.

Example:
    >>> info = Description(name="digits", description="Handwritten digits", version="1",
    ...                    labels=[str(d) for d in range(10)], mean=[0.0], std=[16.0], image="grayscale")
    >>> tagged = attach(content, info)                     # doctest: +SKIP
    >>> read(tagged)["labels"][:3]                         # doctest: +SKIP
    ['0', '1', '2']
"""

from __future__ import annotations

import dataclasses
import io
import zipfile
from typing import Optional

import flatbuffers
import numpy as np
from flatbuffers import encode, number_types, table

METADATA_NAME = "TFLITE_METADATA"
IDENTIFIER = b"M001"
PARSER_VERSION = "1.0.0"          # the oldest parser that reads every field written here
LABELS_FILE = "labels.txt"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # a fixed date: the same model and labels give the same bytes
# Enum and union values of metadata_schema.fbs.
_COLOR_SPACES = {"rgb": 1, "grayscale": 2}
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES = 1, 2      # ContentProperties
_NORMALIZATION_OPTIONS = 1                         # ProcessUnitOptions
_TENSOR_AXIS_LABELS = 2                            # AssociatedFileType


@dataclasses.dataclass(frozen=True)
class Description:
    """What the metadata says about a model with one input and one output.

    Attributes:
        name: the model's name.
        description: what it does, in a sentence.
        version: the model's version (the creator's, not the schema's).
        author: who made it ("" leaves it out).
        license: its license ("" leaves it out).
        labels: one name per output index, written as ``labels.txt``.
        mean, std: per-channel (or one) values with which a device normalizes its raw
            input, ``(x - mean) / std``; ``None`` when the input is fed as it is.
        image: ``"grayscale"`` or ``"rgb"`` for an image input, ``None`` for other features.
        input_description, output_description: a sentence each.
    """

    name: str
    description: str
    version: str = ""
    author: str = ""
    license: str = ""
    labels: tuple[str, ...] | list[str] = ()
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    image: Optional[str] = None
    input_description: str = ""
    output_description: str = ""


def for_file(cfg, target: str, quantization: str, model, dataset, content: bytes) -> bytes:
    """A run's file with its metadata (``cfg.metadata``), or as it is when ``metadata.write`` is false or the
    target keeps bare files (a module with ``METADATA = False``: micro, whose flash the bytes would cost)."""
    from edgecomp import models, targets

    if not cfg.metadata.write or not getattr(targets.module(target), "METADATA", True):
        return content
    kind = "probabilities" if models.head_activation(model) == "softmax" else "logits"
    return attach(content, for_run(cfg.metadata, cfg.name, dataset, dataset.labels, kind, target, quantization))


def for_run(settings, name: str, dataset, labels: list[str], output_kind: str, target: str,
            quantization: str) -> Description:
    """The description of a run's file: ``settings`` is the config's ``metadata`` section.

    Args:
        settings: ``MetadataConfig`` (description, version, author, license).
        name: the run's name; dataset: its ``Dataset`` (normalization, image kind, preprocessing).
        labels: one name per output index.
        output_kind: ``probabilities`` (softmax head) or ``logits``.
        target, quantization: what the file was made for.
    """
    import edgecomp

    made = (f"{name}: a {dataset.num_classes}-class classifier of {dataset.name} data for the {target} target "
            f"({quantization}), made with edgecomp {edgecomp.__version__}")
    mean, std = dataset.normalization if dataset.normalization is not None else (None, None)
    return Description(
        name=name, description=settings.description or made, version=settings.version, author=settings.author,
        license=settings.license, labels=tuple(labels),
        mean=None if mean is None else [mean], std=None if std is None else [std], image=dataset.image,
        input_description=dataset.preprocessing,
        output_description="probabilities (softmax)" if output_kind == "probabilities"
        else "logits: apply a softmax for probabilities")


def attach(content: bytes, info: Description) -> bytes:
    """``content`` with ``info`` as its metadata (any earlier metadata and associated files replaced).

    Raises:
        ValueError: ``mean`` without ``std`` (or the reverse), a zero ``std``, or an
            unknown ``image`` kind.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    _check(info)
    model = schema.ModelT.InitFromPackedBuf(bytearray(_flatbuffer_part(content)), 0)
    metadata = model_metadata(info)
    data = np.frombuffer(metadata, dtype=np.uint8)
    entry = next((entry for entry in model.metadata or [] if _name(entry.name) == METADATA_NAME), None)
    if entry is not None:           # earlier metadata: its buffer takes the new bytes (tensors keep their indices)
        model.buffers[entry.buffer].data = data
    else:
        buffer = schema.BufferT()
        buffer.data = data
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = METADATA_NAME
        entry.buffer = len(model.buffers) - 1
        model.metadata = list(model.metadata or []) + [entry]
    model.description = info.description
    builder = flatbuffers.Builder(len(content) + len(metadata) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return _append_files(bytes(builder.Output()), {LABELS_FILE: "".join(f"{label}\n" for label in info.labels)}
                         if info.labels else {})


def _check(info: Description) -> None:
    if (info.mean is None) != (info.std is None):
        raise ValueError("metadata: give both mean and std for the input normalization, or neither")
    if info.std is not None and any(value == 0 for value in info.std):
        raise ValueError(f"metadata: std {info.std} has a zero: (x - mean) / std would divide by zero")
    if info.image is not None and info.image not in _COLOR_SPACES:
        raise ValueError(f"metadata: image {info.image!r}: expected one of {sorted(_COLOR_SPACES)} or None")


def _name(value) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value or "")


def _flatbuffer_part(content: bytes) -> bytes:
    """The model without an appended zip of associated files (the flatbuffer ignores trailing bytes)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            # For a zip appended to other bytes, ZipFile shifts each header offset by what precedes the zip.
            return content[:min((info.header_offset for info in archive.infolist()), default=len(content))]
    except zipfile.BadZipFile:
        return content


def _append_files(flatbuffer: bytes, files_by_name: dict[str, str]) -> bytes:
    if not files_by_name:
        return flatbuffer
    out = io.BytesIO()
    out.write(flatbuffer)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        for name, text in files_by_name.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=_ZIP_TIME), text.encode())
    return out.getvalue()


# ---- writing the ModelMetadata flatbuffer -------------------------------------------


def model_metadata(info: Description) -> bytes:
    """The ``ModelMetadata`` flatbuffer (identifier ``M001``) for ``info``."""
    builder = flatbuffers.Builder(1024)
    strings = {key: builder.CreateString(value) for key, value in (
        ("name", info.name), ("description", info.description), ("version", info.version),
        ("author", info.author), ("license", info.license), ("parser", PARSER_VERSION)) if value}
    subgraph = _subgraph(builder, info)
    subgraphs = _offsets(builder, [subgraph])
    builder.StartObject(8)
    for slot, key in ((0, "name"), (1, "description"), (2, "version"), (4, "author"), (5, "license"),
                      (7, "parser")):
        if key in strings:
            builder.PrependUOffsetTRelativeSlot(slot, strings[key], 0)
    builder.PrependUOffsetTRelativeSlot(3, subgraphs, 0)
    builder.Finish(builder.EndObject(), file_identifier=IDENTIFIER)
    return bytes(builder.Output())


def _subgraph(builder, info: Description) -> int:
    inputs = _offsets(builder, [_input_tensor(builder, info)])
    outputs = _offsets(builder, [_output_tensor(builder, info)])
    builder.StartObject(7)
    builder.PrependUOffsetTRelativeSlot(2, inputs, 0)
    builder.PrependUOffsetTRelativeSlot(3, outputs, 0)
    return builder.EndObject()


def _input_tensor(builder, info: Description) -> int:
    name = builder.CreateString("image" if info.image else "input")
    description = builder.CreateString(info.input_description) if info.input_description else None
    content = _content(builder, info.image)
    units = None
    if info.mean is not None:
        mean = builder.CreateNumpyVector(np.asarray(info.mean, dtype=np.float32))
        std = builder.CreateNumpyVector(np.asarray(info.std, dtype=np.float32))
        builder.StartObject(2)
        builder.PrependUOffsetTRelativeSlot(0, mean, 0)
        builder.PrependUOffsetTRelativeSlot(1, std, 0)
        normalization = builder.EndObject()
        builder.StartObject(2)
        builder.PrependUint8Slot(0, _NORMALIZATION_OPTIONS, 0)
        builder.PrependUOffsetTRelativeSlot(1, normalization, 0)
        units = _offsets(builder, [builder.EndObject()])
    builder.StartObject(7)
    builder.PrependUOffsetTRelativeSlot(0, name, 0)
    if description is not None:
        builder.PrependUOffsetTRelativeSlot(1, description, 0)
    builder.PrependUOffsetTRelativeSlot(3, content, 0)
    if units is not None:
        builder.PrependUOffsetTRelativeSlot(4, units, 0)
    return builder.EndObject()


def _output_tensor(builder, info: Description) -> int:
    name = builder.CreateString("probability" if info.labels else "output")
    description = builder.CreateString(info.output_description) if info.output_description else None
    content = _content(builder, None)
    files_vector = None
    if info.labels:
        file_name = builder.CreateString(LABELS_FILE)
        file_description = builder.CreateString("One label per output index.")
        builder.StartObject(4)
        builder.PrependUOffsetTRelativeSlot(0, file_name, 0)
        builder.PrependUOffsetTRelativeSlot(1, file_description, 0)
        builder.PrependInt8Slot(2, _TENSOR_AXIS_LABELS, 0)
        files_vector = _offsets(builder, [builder.EndObject()])
    builder.StartObject(7)
    builder.PrependUOffsetTRelativeSlot(0, name, 0)
    if description is not None:
        builder.PrependUOffsetTRelativeSlot(1, description, 0)
    builder.PrependUOffsetTRelativeSlot(3, content, 0)
    if files_vector is not None:
        builder.PrependUOffsetTRelativeSlot(6, files_vector, 0)
    return builder.EndObject()


def _content(builder, image: Optional[str]) -> int:
    if image is None:
        builder.StartObject(0)
        properties, kind = builder.EndObject(), _FEATURE_PROPERTIES
    else:
        builder.StartObject(2)
        builder.PrependInt8Slot(0, _COLOR_SPACES[image], 0)
        properties, kind = builder.EndObject(), _IMAGE_PROPERTIES
    builder.StartObject(3)
    builder.PrependUint8Slot(0, kind, 0)
    builder.PrependUOffsetTRelativeSlot(1, properties, 0)
    return builder.EndObject()


def _offsets(builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


# ---- reading it back -----------------------------------------------------------------


def read(content: bytes) -> Optional[dict]:
    """The metadata of ``content`` as written by ``attach`` (``None`` when it has none).

    Returns:
        ``{name, description, version, author, license, min_parser_version, input:
        {name, image, mean, std}, output: {name, label_file}, labels, files}``; ``labels``
        come from the packed label file, ``files`` names every packed file.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(bytearray(content), 0)
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        if entry.Name().decode() == METADATA_NAME:
            data = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
            return {**_read_model_metadata(data), **_packed_files(content)}
    return None


def _read_model_metadata(data: bytes) -> dict:
    if data[4:8] != IDENTIFIER:
        raise ValueError(f"{METADATA_NAME}: identifier {data[4:8]!r}, expected {IDENTIFIER!r}")
    root = _root(data)
    subgraph = _tables(root, 3)[0]
    tensor_in, tensor_out = _tables(subgraph, 2)[0], _tables(subgraph, 3)[0]
    content = _table(tensor_in, 3)
    image = None
    if content is not None and _scalar(content, 0, number_types.Uint8Flags) == _IMAGE_PROPERTIES:
        color = _scalar(_union(content, 1), 0, number_types.Int8Flags)
        image = {code: name for name, code in _COLOR_SPACES.items()}.get(color)
    mean = std = None
    for unit in _tables(tensor_in, 4):
        if _scalar(unit, 0, number_types.Uint8Flags) == _NORMALIZATION_OPTIONS:
            options = _union(unit, 1)
            mean, std = _floats(options, 0), _floats(options, 1)
    label_files = [_string(item, 0) for item in _tables(tensor_out, 6)
                   if _scalar(item, 2, number_types.Int8Flags) == _TENSOR_AXIS_LABELS]
    return {
        "name": _string(root, 0), "description": _string(root, 1), "version": _string(root, 2),
        "author": _string(root, 4), "license": _string(root, 5), "min_parser_version": _string(root, 7),
        "input": {"name": _string(tensor_in, 0), "image": image, "mean": mean, "std": std},
        "output": {"name": _string(tensor_out, 0), "label_file": label_files[0] if label_files else None},
    }


def _packed_files(content: bytes) -> dict:
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            names = archive.namelist()
            labels = archive.read(LABELS_FILE).decode().splitlines() if LABELS_FILE in names else []
    except zipfile.BadZipFile:
        names, labels = [], []
    return {"files": names, "labels": labels}


def _root(data: bytes) -> table.Table:
    buffer = bytearray(data)
    return table.Table(buffer, encode.Get(number_types.UOffsetTFlags.packer_type, buffer, 0))


def _field(item: table.Table, slot: int) -> int:
    return item.Offset(4 + 2 * slot)


def _string(item: table.Table, slot: int) -> Optional[str]:
    offset = _field(item, slot)
    return item.String(offset + item.Pos).decode() if offset else None


def _scalar(item: table.Table, slot: int, flags) -> int:
    offset = _field(item, slot)
    return item.Get(flags, offset + item.Pos) if offset else 0


def _table(item: table.Table, slot: int) -> Optional[table.Table]:
    offset = _field(item, slot)
    return table.Table(item.Bytes, item.Indirect(offset + item.Pos)) if offset else None


def _union(item: table.Table, slot: int) -> Optional[table.Table]:
    offset = _field(item, slot)
    if not offset:
        return None
    found = table.Table(bytearray(), 0)
    item.Union(found, offset)
    return found


def _tables(item: table.Table, slot: int) -> list[table.Table]:
    offset = _field(item, slot)
    if not offset:
        return []
    start = item.Vector(offset)
    return [table.Table(item.Bytes, item.Indirect(start + 4 * index)) for index in range(item.VectorLen(offset))]


def _floats(item: table.Table, slot: int) -> Optional[list[float]]:
    offset = _field(item, slot)
    return [float(v) for v in item.GetVectorAsNumpy(number_types.Float32Flags, offset)] if offset else None
