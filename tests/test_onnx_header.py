"""edgeseg.onnx_header: the contract's fields read from the wire, checked against the onnx package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg import SHIPPED_MODEL
from edgeseg.artifacts import ArtifactPaths
from edgeseg.onnx_header import parse, read_header


def onnx_view(proto: onnx.ModelProto) -> dict:
    """What onnx itself says of the fields the header reads."""

    def vi(v: onnx.ValueInfoProto) -> tuple:
        t = v.type.tensor_type
        elem = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "?"
        return v.name, ("float" if elem == "float32" else elem), len(t.shape.dim)

    return {
        "opsets": {o.domain: o.version for o in proto.opset_import},
        "metadata": {p.key: p.value for p in proto.metadata_props},
        "inputs": [vi(v) for v in proto.graph.input],
        "outputs": [vi(v) for v in proto.graph.output],
        "initializers": {i.name for i in proto.graph.initializer},
    }


def header_view(data: bytes) -> dict:
    h = parse(data)
    return {
        "opsets": h.opsets,
        "metadata": h.metadata,
        "inputs": [(v.name, v.elem, v.rank) for v in h.inputs],
        "outputs": [(v.name, v.elem, v.rank) for v in h.outputs],
        "initializers": h.initializers,
    }


def odd_model() -> onnx.ModelProto:
    """Initialisers listed as inputs (old IR), several opset domains, unicode metadata, int64/float16 I/O."""
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    inputs = [
        helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "H", "W"]),
        helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 2]),
    ]
    outputs = [
        helper.make_tensor_value_info("a", TensorProto.INT64, [3]),
        helper.make_tensor_value_info("b", TensorProto.FLOAT16, None),
    ]
    nodes = [helper.make_node("Shape", ["image"], ["s"]), helper.make_node("Identity", ["s"], ["a"])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=[w])
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    for key, value in {"edgeseg.class_names": '["fond", "substance grise"]', "note": "µm ü 脑"}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_the_shipped_files_read_as_onnx_reads_them(precision: str) -> None:
    path = ArtifactPaths.of(SHIPPED_MODEL).onnx(precision)
    data = path.read_bytes()
    assert header_view(data) == onnx_view(onnx.load_from_string(data))
    assert read_header(path).opset == 20 and len(parse(data).metadata) >= 8


def test_an_odd_but_valid_model_reads_as_onnx_reads_it() -> None:
    proto = odd_model()
    view = header_view(proto.SerializeToString())
    assert view == onnx_view(proto)
    assert view["outputs"] == [("a", "int64", 1), ("b", "float16", 0)]
    assert view["metadata"]["note"] == "µm ü 脑" and view["opsets"]["com.microsoft"] == 1


def test_every_truncation_of_a_real_file_is_a_clean_value_error_or_a_shorter_header() -> None:
    """Cut anywhere, the bytes never read past their end and never crash with anything else."""
    data = odd_model().SerializeToString()
    for cut in range(len(data)):
        try:
            parse(data[:cut])
        except ValueError:
            pass


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\x3a\xff\xff\xff\xff\x0f", "claims"),  # graph field claiming 4 GB in a 6-byte file
        (b"\x08" + b"\xff" * 11, "varint"),
        (b"\x0b\x00", "wire type 3"),
        (b"\x00\x01", "field number 0"),
        (b"\x09\x00\x00", "fixed-width"),
    ],
)
def test_hostile_bytes_are_refused_before_anything_is_allocated(data: bytes, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse(data)


def test_reading_a_model_no_longer_imports_onnx() -> None:
    code = (
        "import sys; from edgeseg.artifacts import read_model_info; from edgeseg import SHIPPED_MODEL;"
        " read_model_info(SHIPPED_MODEL); print('onnx' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_file_the_size_of_its_claims_is_fine(tmp_path: Path) -> None:
    proto = odd_model()
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    assert read_header(path).inputs[0].name == "image"
