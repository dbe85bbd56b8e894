"""What edgeseg checks in an ONNX file, read from protobuf's wire format without the onnx package.

:func:`edgeseg.artifacts.read_model_info` runs in every inference process. Importing ``onnx``
there cost ~11 MB of resident memory (its C++ extension and protobuf runtime), a fifth of what
an edge box's inference process may use (``rss_mb`` in bench/targets.toml). This module reads
only the fields the contract needs, from the bytes of the file:

* ``ModelProto.opset_import`` (field 8: ``OperatorSetIdProto`` domain 1, version 2);
* ``ModelProto.metadata_props`` (field 14: ``StringStringEntryProto`` key 1, value 2);
* ``ModelProto.graph`` (field 7): ``GraphProto.input`` (11), ``output`` (12) as
  ``ValueInfoProto`` (name 1, type 2 -> ``TypeProto.tensor_type`` 1 -> elem_type 1,
  shape 2 -> dim 1), and the names of ``initializer`` (5 -> ``TensorProto.name`` 8).

Everything else (nodes, weights) is skipped by its length, never decoded. Every length is
checked against the bytes that remain, so a truncated or hostile file raises ValueError
instead of reading past its end. Imports the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# onnx.TensorProto.DataType -> numpy's dtype name ("float" for float32, as edgeseg names it)
ELEM_TYPES = {
    1: "float",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "str",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    16: "bfloat16",
}
VARINT, I64, LEN, I32 = 0, 1, 2, 5


@dataclass
class ValueInfo:
    """A graph input or output: its name, element type ("float", "uint8", ... or "?") and rank."""

    name: str
    elem: str = "?"
    rank: int = 0


@dataclass
class OnnxHeader:
    """The parts of a ModelProto that edgeseg's contract checks."""

    opsets: dict[str, int] = field(default_factory=dict)  # domain -> version
    metadata: dict[str, str] = field(default_factory=dict)
    inputs: list[ValueInfo] = field(default_factory=list)
    outputs: list[ValueInfo] = field(default_factory=list)
    initializers: set[str] = field(default_factory=set)

    @property
    def opset(self) -> int:
        """The default domain's opset, 0 if the file names none."""
        return self.opsets.get("", self.opsets.get("ai.onnx", 0))


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int):  # noqa: ANN202  (a generator of fields)
    """``(number, wire_type, value)`` of each field in ``buf[start:end]``; a LEN field's value is
    its ``(start, end)``, a number field's the number."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == VARINT:
            value, pos = _varint(buf, pos, end)
        elif wire == LEN:
            size, pos = _varint(buf, pos, end)
            if size > end - pos:
                raise ValueError(f"a field claims {size} bytes, {end - pos} remain")
            value, pos = (pos, pos + size), pos + size
        elif wire in (I64, I32):
            width = 8 if wire == I64 else 4
            if width > end - pos:
                raise ValueError("truncated fixed-width field")
            value, pos = int.from_bytes(buf[pos : pos + width], "little"), pos + width
        else:
            raise ValueError(f"wire type {wire} (groups or garbage)")
        yield number, wire, value


def _text(buf: memoryview, span: tuple[int, int]) -> str:
    return bytes(buf[span[0] : span[1]]).decode("utf-8", errors="replace")


def _pairs(buf: memoryview, span: tuple[int, int], names: dict[int, str]) -> dict[str, object]:
    """The fields ``names`` (number -> key) of one small message: strings and numbers."""
    out: dict[str, object] = {}
    for number, wire, value in _fields(buf, *span):
        if number in names:
            out[names[number]] = _text(buf, value) if wire == LEN else value
    return out


def _value_info(buf: memoryview, span: tuple[int, int]) -> ValueInfo:
    info = ValueInfo("")
    for number, wire, value in _fields(buf, *span):
        if number == 1 and wire == LEN:
            info.name = _text(buf, value)
        elif number == 2 and wire == LEN:  # TypeProto
            for n2, w2, v2 in _fields(buf, *value):
                if n2 != 1 or w2 != LEN:  # tensor_type only
                    continue
                for n3, w3, v3 in _fields(buf, *v2):
                    if n3 == 1 and w3 == VARINT:
                        info.elem = ELEM_TYPES.get(v3, "?")
                    elif n3 == 2 and w3 == LEN:  # TensorShapeProto
                        info.rank = sum(1 for n4, _, _ in _fields(buf, *v3) if n4 == 1)
    return info


def parse(data: bytes) -> OnnxHeader:
    """The header of a serialised ModelProto; ValueError if the bytes are not well-formed protobuf."""
    buf = memoryview(data)
    head = OnnxHeader()
    for number, wire, value in _fields(buf, 0, len(buf)):
        if wire != LEN:
            continue
        if number == 8:
            entry = _pairs(buf, value, {1: "domain", 2: "version"})
            head.opsets[str(entry.get("domain", ""))] = int(entry.get("version", 0))
        elif number == 14:
            entry = _pairs(buf, value, {1: "key", 2: "value"})
            head.metadata[str(entry.get("key", ""))] = str(entry.get("value", ""))
        elif number == 7:
            for n2, w2, v2 in _fields(buf, *value):
                if w2 != LEN:
                    continue
                if n2 == 11:
                    head.inputs.append(_value_info(buf, v2))
                elif n2 == 12:
                    head.outputs.append(_value_info(buf, v2))
                elif n2 == 5:
                    head.initializers.add(str(_pairs(buf, v2, {8: "name"}).get("name", "")))
    return head


def read_header(path: Path) -> OnnxHeader:
    """:func:`parse` of a file; OSError or ValueError as they come."""
    return parse(Path(path).read_bytes())
